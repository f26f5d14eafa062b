"""The model registry (repository), the replica's model manager and catalogue, and ModelService's servicers."""

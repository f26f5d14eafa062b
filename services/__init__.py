"""llmlab's six gRPC services; each is run with `python -m services.<name>`."""

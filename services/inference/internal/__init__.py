"""InferenceService: the typed gRPC API other services call."""

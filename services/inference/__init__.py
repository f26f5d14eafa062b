"""The inference service: model registry, generation engine and backends, OpenAI-compatible and native APIs."""

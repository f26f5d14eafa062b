"""OpenAI batches (docs/batches.md): domain, repository, the BatchService servicer, and the workers' jobs."""

"""Webhooks: endpoints, Standard Webhooks signatures, SSRF-safe targets, durable delivery with backoff."""

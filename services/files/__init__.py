"""The files service: OpenAI files, datasets and versions, signed URLs, exports and reports."""

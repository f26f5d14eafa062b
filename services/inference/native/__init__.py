"""NativeService: seed 004's local inference API."""

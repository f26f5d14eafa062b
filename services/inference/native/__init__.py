"""NativeService: the native local inference API under `/api/v1` (docs/api.md "native")."""

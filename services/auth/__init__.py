"""The auth service: users, tokens, API keys, and Envoy's external authorization and rate-limit protocols."""

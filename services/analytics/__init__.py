"""The analytics service: dashboards, optimisation advice, usage and billing, and the platform's ops endpoints."""

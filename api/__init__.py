"""HTTP gateway (FastAPI): JWT authentication, per-user daily quotas, validation; creates
flow runs of the platform's deployments and reports their status. See docs/api.md."""

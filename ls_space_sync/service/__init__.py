"""The daemon: schedules, webhooks, the ML-backend endpoints, health and metrics over HTTP."""

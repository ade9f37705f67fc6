"""Alerting: decisions become notifications in an outbox, delivered to sinks with retries."""

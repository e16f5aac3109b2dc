"""Structured logs, Prometheus metrics and health endpoints. No patient data in any of them."""

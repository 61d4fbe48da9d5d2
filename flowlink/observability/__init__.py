"""Seeing inside a running flowlink: Prometheus metrics, structured logs, traces."""

"""Observability: metrics, the reporter, probes and their HTTP server, the memory guard,
logs and profiling."""

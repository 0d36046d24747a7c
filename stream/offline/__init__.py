"""Offline tools: replay, tuning, the demo and its traffic simulator."""

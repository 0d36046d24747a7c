"""The service's core, free of Kafka, SQLite and Prometheus: events, pending joins, the
domain registry, learning, and the object that turns decoded contexts and rewards into
outcomes. The Kafka processor, the in-process Bandit and the HTTP endpoints translate
those outcomes; nothing outside this package changes a domain's counters."""

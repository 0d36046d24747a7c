"""bandit-stream: everything that touches Kafka, SQLite, HTTP and the process."""

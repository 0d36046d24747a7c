"""Kafka: client configuration, codec, topics, delivery, dead letters, topic balance, the
broker watch, and the two brokers this project runs itself (embedded Tansu, Apache Kafka)."""

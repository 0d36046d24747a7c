"""State: snapshots, the SQLite store, the state topic, ownership, the checkpointer and the
rebalance handlers."""

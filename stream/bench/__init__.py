"""`bandit-stream bench`: reproducible measurements written as JSON, Markdown and PNG."""

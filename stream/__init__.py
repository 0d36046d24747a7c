"""bandit-stream: everything that touches Kafka, SQLite, HTTP and the process; and
:class:`Bandit`, the same decisions in process."""

from __future__ import annotations

from typing import Any

__all__ = ["Bandit"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import stream.config` must not load the policies.
    if name == "Bandit":
        from stream.bandit import Bandit

        return Bandit
    raise AttributeError(f"module 'stream' has no attribute {name!r}")

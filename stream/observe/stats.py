"""Running totals since start (read by the demo, the tests and the metrics)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Stats:
    """Running totals since start; rejected messages are counted by Metrics alone."""

    turns: int = 0
    consumed: int = 0
    decisions: int = 0
    rewards_joined: int = 0
    rewards_learned: int = 0
    duplicate_rewards: int = 0
    late_rewards: int = 0
    early_rewards: int = 0  # held until their context came (or counted unknown later)
    unknown_rewards: int = 0
    replay_skipped: int = 0  # replayed messages already in a restored domain's state
    republished: int = 0  # replayed contexts served their decision already published
    expired: int = 0
    evicted: int = 0
    delivery_retries: int = 0
    joined_log_refused: int = 0  # records too large for the joined-log topic

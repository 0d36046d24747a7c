"""One domain's state: its policies by role, its counters and buffers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from policies.base import Policy, PolicyError
from policies.estimators import OnlineEstimate
from policies.features import FeatureIndex
from stream.core.join import Pending

# Variants: who served a decision (the wire's "variant", and the metrics' label).
CONTROL = "control"  # the baseline policy (RL_BASELINE_POLICY)
TREATMENT = "treatment"  # the advanced policy (RL_POLICY) on rollout domains
# Roles: a domain's policies as checkpoints name them ("served" is the baseline's).
BASELINE_ROLE = "served"
TREATMENT_ROLE = TREATMENT
REWARD_MODEL = "reward_model"
SHADOW = "shadow:"


class DomainInfo(msgspec.Struct, kw_only=True):
    """A domain's metadata as checkpoints keep it, beside its policies' arrays."""

    estimates: dict[str, Any] = msgspec.field(default_factory=dict)  # role -> its state
    actions: list[str] = msgspec.field(default_factory=list)
    decisions: int = 0
    rewards_joined: int = 0
    reward_sum: float = 0.0
    expired: int = 0
    partition: int = -1
    # Its features' own slots, in order; absent before the index: the domain keeps hashing.
    feature_index: list[str] | None = None


@dataclass(slots=True)
class DomainState:
    name: str
    baseline: Policy  # serves the control variant
    treatment: Policy | None = None  # the advanced policy, on rollout domains
    shadows: dict[str, Policy] = field(default_factory=dict)
    reward_model: Policy | None = None  # direct-method model for DR estimates
    estimates: dict[str, OnlineEstimate] = field(default_factory=dict)  # role -> running
    actions: set[str] = field(default_factory=set)  # every candidate seen, bounded
    buffer: list[tuple[Pending, float]] = field(default_factory=list)
    buffer_since: float = 0.0
    decisions: int = 0
    rewards_joined: int = 0
    reward_sum: float = 0.0
    expired: int = 0
    partition: int = -1  # the input partition its messages come from (co-partitioned)
    frozen_at: int = -1  # the checkpoint generation referencing its arrays (-1: none)
    index: FeatureIndex | None = None  # its features' own slots (None: hashing alone)

    def roles(self) -> dict[str, Policy]:
        """Every policy of the domain by its role in checkpoints."""
        out = {BASELINE_ROLE: self.baseline}
        if self.treatment is not None:
            out[TREATMENT_ROLE] = self.treatment
        for name, pol in self.shadows.items():
            out[SHADOW + name] = pol
        if self.reward_model is not None:
            out[REWARD_MODEL] = self.reward_model
        return out

    def set_role(self, role: str, policy: Policy) -> None:
        if role == BASELINE_ROLE:
            self.baseline = policy
        elif role == TREATMENT_ROLE:
            self.treatment = policy
        elif role == REWARD_MODEL:
            self.reward_model = policy
        elif role.startswith(SHADOW):
            self.shadows[role[len(SHADOW) :]] = policy
        else:
            raise ValueError(f"unknown policy role {role!r}")

    def info(self) -> DomainInfo:
        return DomainInfo(
            estimates={role: acc.state() for role, acc in self.estimates.items()},
            actions=sorted(self.actions),
            decisions=self.decisions,
            rewards_joined=self.rewards_joined,
            reward_sum=self.reward_sum,
            expired=self.expired,
            partition=self.partition,
            feature_index=None if self.index is None else self.index.tokens(),
        )

    def restore(self, info: DomainInfo, n_features: int) -> None:
        """Take the counters, actions, estimates and feature index a checkpoint kept;
        raises ValueError for any that cannot be."""
        try:
            self.estimates = {r: OnlineEstimate.from_state(v) for r, v in info.estimates.items()}
            self.index = (
                None if info.feature_index is None else FeatureIndex(n_features, info.feature_index)
            )
        except PolicyError as exc:
            raise ValueError(str(exc)) from exc
        self.actions = set(info.actions)
        self.decisions, self.rewards_joined = info.decisions, info.rewards_joined
        self.reward_sum, self.expired = info.reward_sum, info.expired
        self.partition = info.partition

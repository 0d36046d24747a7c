"""One domain's state: its policies by role, its counters and buffers."""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.base import Policy
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

"""Per-domain policies: created on first sight (bounded), deciding and learning in batches."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.utils import murmurhash3_32

from policies.base import Decisions, Feedback, Policy
from policies.features import EncodedContext, FeatureHasher
from policies.registry import create_policy
from stream.codec import ContextEvent
from stream.config import Settings
from stream.join import Pending


def policy_params(name: str, settings: Settings) -> dict[str, Any]:
    """The settings knobs that configure policy ``name`` (constructor keyword arguments)."""
    if name == "epsilon_greedy":
        return {"epsilon": settings.epsilon}
    if name == "linucb":
        return {"alpha": settings.linucb_alpha, "floor": settings.exploration_floor}
    if name == "doubly_robust":
        return {
            "alpha": settings.dr_alpha,
            "learning_rate": settings.dr_learning_rate,
            "lr_decay": settings.dr_lr_decay,
            "max_weight": settings.dr_max_weight,
            "max_history": settings.dr_max_history,
            "floor": settings.exploration_floor,
        }
    if name == "offset_tree":
        return {
            "max_depth": settings.ot_max_depth,
            "min_split": settings.ot_min_split,
            "split_threshold": settings.ot_split_threshold,
            "max_nodes": settings.ot_max_nodes,
            "node_model": settings.ot_node_model,
            "floor": settings.exploration_floor,
        }
    if name == "linear_ts":
        return {"v": settings.ts_scale, "floor": settings.exploration_floor}
    return {}


@dataclass(slots=True)
class DomainState:
    name: str
    policy: Policy
    variant: str
    actions: set[str] = field(default_factory=set)  # every candidate seen, bounded
    buffer: list[tuple[Pending, float]] = field(default_factory=list)
    buffer_since: float = 0.0
    decisions: int = 0
    rewards_joined: int = 0
    reward_sum: float = 0.0
    expired: int = 0
    partition: int = -1  # the input partition its messages come from (co-partitioned)
    # The checkpoint generation whose snapshot references this policy's arrays (-1: none).
    frozen_at: int = -1


class Domains:
    """Owns every domain's served policy and its buffer of rewards awaiting a learn."""

    def __init__(self, settings: Settings, hasher: FeatureHasher) -> None:
        self.settings = settings
        self.hasher = hasher
        self.states: dict[str, DomainState] = {}
        # Domains with rewards awaiting a learn, in the order their buffers started.
        self._buffered: dict[str, DomainState] = {}
        # Copy-on-write for checkpoints: a snapshot references the live policy arrays (no
        # copy in the loop); while its background write is in flight, a domain about to be
        # used gets a private clone first, so the arrays being written never change.
        self.generation = 0
        self.write_in_flight = False

    def __len__(self) -> int:
        return len(self.states)

    def get_or_create(self, domain: str, partition: int = -1) -> DomainState | None:
        """The domain's state, created on first sight; None once ``max_domains`` are active."""
        state = self.states.get(domain)
        if state is not None:
            state.partition = partition
        else:
            if len(self.states) >= self.settings.max_domains:
                return None
            s = self.settings
            # Distinct, stable exploration streams per domain (never Python's hash()).
            seed = murmurhash3_32(domain, seed=s.seed & 0x7FFFFFFF, positive=True)
            policy = create_policy(
                s.baseline_policy, s.feature_dim, seed, **policy_params(s.baseline_policy, s)
            )
            state = DomainState(domain, policy, "control", partition=partition)
            self.states[domain] = state
        return state

    def decide(
        self, state: DomainState, events: list[ContextEvent]
    ) -> tuple[list[EncodedContext], Decisions]:
        """Featurise and choose for a batch of one domain's contexts."""
        enc = self.hasher.encode
        encoded = [enc(e.context, e.candidates, e.candidate_features) for e in events]
        batch = self.hasher.assemble(encoded, [e.event_id for e in events])
        self._thaw(state)
        decisions = state.policy.choose(batch)
        state.decisions += len(events)
        return encoded, decisions

    def add_feedback(self, state: DomainState, pending: Pending, reward: float, now: float) -> None:
        if not state.buffer:
            state.buffer_since = now
            self._buffered[state.name] = state
        state.buffer.append((pending, reward))

    def flush_due(self, now: float, force: bool = False, budget_s: float = 0.02) -> int:
        """Learn the buffers that are full or old enough, oldest first; returns how many
        rewards were learned. Without ``force`` it stops after ``budget_s`` of learning so
        one turn never stalls decisions for long; the rest is learned next turn."""
        learned = 0
        limit, max_delay = self.settings.update_interval, self.settings.update_max_delay_s
        start = time.perf_counter()
        for name, state in list(self._buffered.items()):
            buf = state.buffer
            if force or len(buf) >= limit or now - state.buffer_since >= max_delay:
                learned += self._learn(state, buf)
                state.buffer = []
                del self._buffered[name]
                if not force and time.perf_counter() - start > budget_s:
                    break
        return learned

    def put(self, state: DomainState) -> None:
        """Install a restored domain (replacing any same-named one and its buffer)."""
        self.states[state.name] = state
        self._buffered.pop(state.name, None)

    def release(self, partitions: set[int]) -> set[str]:
        """Drop the domains of ``partitions`` (now another instance's); returns their names."""
        names = {n for n, st in self.states.items() if st.partition in partitions}
        for n in names:
            del self.states[n]
            self._buffered.pop(n, None)
        return names

    def signature(self, state: DomainState) -> tuple[int, int, int, int]:
        """Changes whenever the domain's policy or pending decisions change."""
        return (state.decisions, state.rewards_joined, state.expired, state.policy.n_learned)

    def _thaw(self, state: DomainState) -> None:
        if self.write_in_flight and state.frozen_at == self.generation:
            state.policy = state.policy.clone()
        state.frozen_at = -1

    def freeze_all(self) -> None:
        """Start a snapshot generation: every policy's current arrays are now referenced."""
        self.generation += 1
        self.write_in_flight = True
        for state in self.states.values():
            state.frozen_at = self.generation

    def _learn(self, state: DomainState, items: list[tuple[Pending, float]]) -> int:
        self._thaw(state)
        encoded = [p.encoded for p, _ in items]
        batch = self.hasher.assemble(encoded, [p.event_id for p, _ in items])
        rows = batch.offsets[:-1] + np.fromiter((p.chosen for p, _ in items), np.int64, len(items))
        rewards = np.fromiter((r for _, r in items), np.float64, len(items))
        probs = np.fromiter((p.probability for p, _ in items), np.float64, len(items))
        state.policy.learn(Feedback(batch, rows, rewards, probs))
        return len(items)

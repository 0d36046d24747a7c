"""The service's decisions in process: one domain, no Kafka.

For a notebook, a batch job or a synchronous caller, and for measuring the product's own
path from outside. A :class:`Bandit` is one domain built exactly as the service builds
one — the settings (defaults, ``RL_*`` from the environment, keyword overrides by setting
name), the feature pipeline, the policies of a rollout and their seeds — and it decides,
joins and learns as the service does: contexts and rewards are checked against the same
event contract, a reward joins the decision of its event id within ``RL_REWARD_WAIT_S``
(after which the decision learns ``RL_DEFAULT_REWARD``), and learning follows
``RL_UPDATE_INTERVAL`` / ``RL_UPDATE_MAX_DELAY_S``. Its state is the state topic's record
format, so a state round-trips exactly.

>>> from stream import Bandit
>>> bandit = Bandit(update_interval=1, epsilon=0.1)
>>> choice = bandit.decide({"country": "de", "hour": 9}, ["a", "b"], event_id="e1")
>>> choice.action in ("a", "b"), round(sum(choice.distribution.values()), 9)
(True, 1.0)
>>> choice.probability == choice.distribution[choice.action]
True
>>> bandit.learn("e1", 1.0)
'joined'
>>> again = Bandit.from_state(bandit.state(), update_interval=1, epsilon=0.1)
>>> again.decide({"country": "de", "hour": 9}, ["a", "b"], "e2") == bandit.decide(
...     {"country": "de", "hour": 9}, ["a", "b"], "e2")
True
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING

from policies.features import FeatureHasher, Scalar
from stream.config import load_settings
from stream.core.domain import DomainState
from stream.core.domains import Domains
from stream.core.join import Outcome, Pending, PendingJoins
from stream.kafka.codec import Limits, decode_context, decode_reward
from stream.state.snapshot import encode_pending, finished_by_domain, restore, take_snapshot
from stream.state.topic import decode_domain, encode_domain


@dataclass(frozen=True)
class Choice:
    """One decision: the action, the exact probability it was sampled with, the whole
    distribution over the candidates, and who decided (as on the decisions topic)."""

    event_id: str
    action: str
    probability: float
    distribution: dict[str, float]
    policy: str
    variant: str


class Bandit:
    """One domain's policies, deciding and learning in process (see the module doc)."""

    def __init__(self, domain: str = "default", **overrides: Any) -> None:
        s = self.settings = load_settings(**overrides)
        self.domain = domain
        self.hasher = FeatureHasher(s.feature_dim, seed=s.seed)
        self.domains = Domains(s, self.hasher)
        self.joins = PendingJoins(s.max_pending, s.reward_wait_s, max_per_domain=s.max_pending)
        self.limits = Limits.of(s)
        state = self.domains.get_or_create(domain, 0)
        if state is None:  # RL_MAX_DOMAINS < 1 cannot be configured; kept for the type
            raise RuntimeError(f"domain {domain!r} cannot be created")
        self._state: DomainState = state

    # -- deciding and learning ----------------------------------------------------------
    def decide(
        self,
        context: Mapping[str, Scalar],
        candidates: Sequence[str],
        event_id: str | None = None,
        candidate_features: Mapping[str, Mapping[str, Scalar]] | None = None,
    ) -> Choice:
        """Choose one of ``candidates`` for ``context``; raises ``DecodeError`` (with the
        service's reason) for an event the service would dead-letter."""
        now = time.time()
        self._expire(now)
        event = {
            "event_id": event_id if event_id is not None else uuid.uuid4().hex,
            "domain": self.domain,
            "context": dict(context),
            "candidates": [str(c) for c in candidates],  # numpy strings too
        }
        if candidate_features is not None:
            event["candidate_features"] = {str(a): dict(f) for a, f in candidate_features.items()}
        ev = decode_context(orjson.dumps(event), self.domain.encode(), self.limits)
        (served,) = self.domains.decide(self._state, [ev])
        d = served.decisions
        row = int(d.row[0])
        dist = dict(zip(ev.candidates, d.pmf.tolist(), strict=True))
        pending = Pending(
            self.domain,
            ev.event_id,
            served.encoded[0],
            row,
            float(d.probability[0]),
            served.policy.name,
            served.variant,
            now,
            now + self.settings.reward_wait_s,
        )
        self.joins.discard(self.domain, ev.event_id)  # an id decided again starts afresh
        self._learn_default(self.joins.add(pending), now)
        return Choice(
            ev.event_id,
            ev.candidates[row],
            float(d.probability[0]),
            dist,
            served.policy.name,
            served.variant,
        )

    def learn(self, event_id: str, reward: float) -> str:
        """Join ``reward`` to the decision of ``event_id`` and learn on the service's
        cadence; returns the join's outcome: joined, duplicate, late or unknown."""
        now = time.time()
        self._expire(now)
        value = orjson.dumps({"event_id": event_id, "domain": self.domain, "reward": reward})
        r = decode_reward(value, self.domain.encode(), self.limits)
        outcome, pending = self.joins.take(self.domain, r.event_id)
        if outcome is Outcome.JOINED and pending is not None:
            self._state.rewards_joined += 1
            self._state.reward_sum += r.reward
            self.domains.learner.add(self._state, pending, r.reward, now)
        self.domains.learner.learn(now)
        return outcome.value

    def flush(self) -> int:
        """Learn every joined reward now, whatever the cadence; returns how many."""
        return self.domains.learner.learn(time.time(), force=True)

    def _expire(self, now: float) -> None:
        self._learn_default(self.joins.expire(now), now)

    def _learn_default(self, items: list[Pending], now: float) -> None:
        default = self.settings.default_reward
        for p in items:
            self._state.expired += 1
            if default is not None:
                self.domains.learner.add(self._state, p, default, now)

    # -- state --------------------------------------------------------------------------
    def state(self) -> bytes:
        """The domain's policies, pending decisions and unlearned rewards, in the state
        topic's record format (the checkpoint's arrays, exact)."""
        snap = take_snapshot(self.domains, self.joins, self.hasher, {})
        self.domains.learner.end_write()  # nothing is written in the background here
        snap = encode_pending(snap)
        offsets = (OFFSET_BEGINNING, OFFSET_BEGINNING)
        finished = finished_by_domain(snap).get(self.domain, [])
        return encode_domain(snap, self.domain, 0, offsets, snap.pending, finished=finished)

    @classmethod
    def from_state(cls, data: bytes, **overrides: Any) -> Bandit:
        """A Bandit continuing from :meth:`state` (the settings are the caller's again;
        the feature dimension and seed must match the state's)."""
        rec = decode_domain(data, ("contexts", "rewards"))
        bandit = cls(rec.domain, **overrides)
        restore(rec.snapshot, bandit.domains, bandit.joins, bandit.hasher)
        bandit._state = bandit.domains.states[rec.domain]
        return bandit

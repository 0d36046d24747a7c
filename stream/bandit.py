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
from stream.core.engine import Engine
from stream.core.outcomes import DUPLICATE_REWARD, EXPIRED_EVENT, Decided, Failed, Joined, Refused
from stream.core.streamtime import StreamTime
from stream.kafka.codec import DecodeError, Limits, decode_context, decode_reward
from stream.state.snapshot import restore, take_snapshot
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
        """``overrides``: settings by name; ``policy`` names the policy that serves (as
        ``baseline_policy`` does; the service's ``RL_POLICY`` is its rollout's advanced
        policy, served only with ``enable_rl_advanced``)."""
        s = load_settings(**overrides)
        if (
            "policy" in overrides
            and "baseline_policy" not in overrides
            and not s.enable_rl_advanced
        ):
            s = s.model_copy(update={"baseline_policy": s.policy})  # validated as RL_POLICY
        self.settings = s
        self.domain = domain
        self.hasher = FeatureHasher(s.feature_dim, seed=s.seed)
        # In process the caller's clock is the stream's: a window closes at its deadline,
        # and a reward for an unknown decision is unknown at once (nothing is in flight).
        clock = StreamTime(0.0, 0.0)
        quiet = s.model_copy(update={"reward_early_wait_s": 0.0, "max_pending_per_domain": None})
        self.engine = Engine(quiet, self.hasher, clock=clock)
        self.domains, self.joins = self.engine.domains, self.engine.joins
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
        service's code and reason) for an event the service would dead-letter: a malformed
        one, or an event id already decided within its window."""
        now = self._tick()
        event = {
            "event_id": event_id if event_id is not None else uuid.uuid4().hex,
            "domain": self.domain,
            "context": dict(context),
            "candidates": [str(c) for c in candidates],  # numpy strings too
        }
        if candidate_features is not None:
            event["candidate_features"] = {str(a): dict(f) for a, f in candidate_features.items()}
        ev = decode_context(orjson.dumps(event), self.domain.encode(), self.limits)
        ev.record_time = now
        decided = None
        for o in self.engine.decide([(self.domain, [ev], 0)]):
            if isinstance(o, Refused):
                raise DecodeError(o.code, o.reason)
            if isinstance(o, Failed):
                raise o.error
            if isinstance(o, Decided):
                decided = o
        assert decided is not None
        self.engine.claim_early(decided)
        d = decided.decision
        return Choice(ev.event_id, d.action, d.probability, d.probabilities, d.policy, d.variant)

    def learn(self, event_id: str, reward: float) -> str:
        """Join ``reward`` to the decision of ``event_id`` and learn on the service's
        cadence; returns the join's outcome: joined, duplicate, late or unknown."""
        now = self._tick()
        value = orjson.dumps({"event_id": event_id, "domain": self.domain, "reward": reward})
        r = decode_reward(value, self.domain.encode(), self.limits)
        r.record_time = now
        (outcome,) = self.engine.reward(r, 0)
        self.engine.learn(now)
        if isinstance(outcome, Joined):
            return "joined"
        code = outcome.code if isinstance(outcome, Refused) else ""
        return {DUPLICATE_REWARD: "duplicate", EXPIRED_EVENT: "late"}.get(code, "unknown")

    def flush(self) -> int:
        """Learn every joined reward now, whatever the cadence; returns how many."""
        return self.engine.learn(time.time(), force=True)

    def _tick(self) -> float:
        """The stream's time is now: windows before it close."""
        now = self.engine.now = time.time()
        self.engine.clock.read(True, 0, now)
        self.engine.clock.read(False, 0, now)
        self.engine.expire()
        return now

    # -- state --------------------------------------------------------------------------
    def state(self) -> bytes:
        """The domain's policies, pending decisions and unlearned rewards, in the state
        topic's record format (the checkpoint's arrays, exact)."""
        snap = take_snapshot(self.domains, self.joins, self.hasher, {}).complete()
        self.domains.learner.end_write()  # nothing is written in the background here
        return encode_domain(snap, self.domain, 0, (OFFSET_BEGINNING, OFFSET_BEGINNING))

    @classmethod
    def from_state(cls, data: bytes, **overrides: Any) -> Bandit:
        """A Bandit continuing from :meth:`state` (the settings are the caller's again;
        the feature dimension and seed must match the state's)."""
        rec = decode_domain(data, ("contexts", "rewards"))
        bandit = cls(rec.domain, **overrides)
        restore(rec.snapshot, bandit.domains, bandit.joins, bandit.hasher)
        bandit._state = bandit.domains.states[rec.domain]
        return bandit

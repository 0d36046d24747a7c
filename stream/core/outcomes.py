"""What the core makes of each context and reward: outcomes, with what each carries.

The Kafka processor, the in-process Bandit and the HTTP endpoints translate outcomes (into
records, dead letters, metrics, joined-log lines); they never change a domain's state or
counters themselves. An outcome with a ``code`` is a refusal: the message it names goes to
the dead-letter topic with that code and reason (docs/events.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stream.core.domain import DomainState
from stream.core.events import ContextEvent, Decision, RewardEvent
from stream.core.join import Pending


@dataclass(slots=True)
class Decided:
    """A new decision: published by the caller, then :meth:`Engine.claim_early`."""

    state: DomainState
    event: ContextEvent
    pending: Pending
    decision: Decision


@dataclass(slots=True)
class Republished:
    """A replayed context awaits its reward with the decision already published for it."""

    state: DomainState
    event: ContextEvent
    pending: Pending


@dataclass(slots=True)
class Joined:
    """A reward joined to its decision; learned on the update cadence."""

    state: DomainState
    pending: Pending
    reward: float


@dataclass(slots=True)
class Held:
    """A reward read before its context, held for it."""

    event: RewardEvent


@dataclass(slots=True)
class Expired:
    """A decision whose window closed without a reward (``evicted``: pushed out early to
    stay in bounds); ``reward`` is the default it learns, None when it learns nothing."""

    state: DomainState
    pending: Pending
    reward: float | None
    evicted: bool = False


@dataclass(slots=True)
class Refused:
    """A message the service will not take (dead-lettered with ``code`` and ``reason``).
    ``domain`` is set when the domain is held here (metrics label it)."""

    code: str
    reason: str
    source: Any
    domain: str | None = None


@dataclass(slots=True)
class Failed:
    """Processing this message raised (RL_ON_PROCESSING_ERROR=dead_letter): dead-lettered
    as ``internal_error``."""

    error: Exception
    source: Any

    code = "internal_error"


Outcome = Decided | Republished | Joined | Held | Expired | Refused | Failed

# Codes of the refusals (docs/events.md).
DUPLICATE_EVENT = "duplicate_event"
DUPLICATE_REWARD = "duplicate_reward"
EXPIRED_EVENT = "expired_event"
UNKNOWN_EVENT = "unknown_event"
DOMAIN_LIMIT = "domain_limit"
ACTION_LIMIT = "action_limit"

"""Decisions and early rewards as JSON: in checkpoints, the joined log and replay.

Reading validates every field against the feature dimension, so a corrupt checkpoint or
log line is refused by name instead of reaching a policy.
"""

from __future__ import annotations

import math
from typing import Any

from policies.features import EncodedContext, Sparse
from stream.core.early import EarlyReward
from stream.core.join import Pending
from stream.kafka.deadletter import Source


class MalformedRecord(ValueError):
    """A decision record that does not hold what its fields promise."""


def decision_record(p: Pending) -> dict[str, Any]:
    """The decision's fields: what a checkpoint keeps and the joined log extends."""
    e = p.encoded
    return {
        "domain": p.domain,
        "event_id": p.event_id,
        "context": [e.context[0], e.context[1]],
        "candidates": list(e.candidates),
        "candidate_features": None
        if e.candidate_features is None
        else {a: [f[0], f[1]] for a, f in e.candidate_features.items()},
        "chosen": p.chosen,
        "probability": p.probability,
        "policy": p.policy,
        "variant": p.variant,
        "decided_at": p.decided_at,
        "deadline": p.deadline,
        "distribution": None if p.distribution is None else list(p.distribution),
        "policy_version": p.policy_version,
    }


def joined_record(
    p: Pending, reward: float | None, default: bool, n_features: int, now: float
) -> dict[str, Any]:
    """A finished decision for the joined log (fields in docs/events.md)."""
    rec = decision_record(p)
    del rec["deadline"]
    rec.update(
        n_features=n_features,
        action=p.encoded.candidates[p.chosen],
        reward=reward,
        default_reward=default,
        finished_at=now,
    )
    return rec


def _sparse(obj: Any, n_features: int) -> Sparse:
    if (
        not isinstance(obj, list)
        or len(obj) != 2
        or not isinstance(obj[0], list)
        or not isinstance(obj[1], list)
        or len(obj[0]) != len(obj[1])
        or not all(isinstance(i, int) and 0 <= i < n_features for i in obj[0])
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in obj[1])
    ):
        raise MalformedRecord("malformed features")
    return tuple(obj[0]), tuple(float(v) for v in obj[1])


def encoded_from_record(rec: dict[str, Any], n_features: int) -> EncodedContext:
    """The hashed features the policy saw, checked against ``n_features``."""
    try:
        cands = tuple(rec["candidates"])
        cf = rec["candidate_features"]
    except (KeyError, TypeError) as exc:
        raise MalformedRecord(f"missing {exc}") from exc
    if not cands or not all(isinstance(c, str) for c in cands):
        raise MalformedRecord("candidates must be a non-empty list of strings")
    if cf is not None and not isinstance(cf, dict):
        raise MalformedRecord("candidate_features must be an object or null")
    return EncodedContext(
        _sparse(rec["context"], n_features),
        cands,
        None if cf is None else {str(a): _sparse(f, n_features) for a, f in cf.items()},
    )


def _distribution(obj: Any, k: int) -> tuple[float, ...] | None:
    if obj is None:
        return None
    if not isinstance(obj, list) or len(obj) != k:
        raise MalformedRecord("the distribution does not match the candidates")
    out = tuple(float(v) for v in obj)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in out):
        raise MalformedRecord("the distribution holds a non-probability")
    return out


def pending_from_record(d: dict[str, Any], n_features: int) -> Pending:
    """A pending decision as :func:`decision_record` wrote it."""
    try:
        enc = encoded_from_record(d, n_features)
        chosen = int(d["chosen"])
        prob = float(d["probability"])
        if not (0 <= chosen < len(enc.candidates) and 0.0 < prob <= 1.0):
            raise MalformedRecord("bad chosen index or probability")
        return Pending(
            str(d["domain"]),
            str(d["event_id"]),
            enc,
            chosen,
            prob,
            str(d["policy"]),
            str(d["variant"]),
            float(d["decided_at"]),
            float(d["deadline"]),
            _distribution(d.get("distribution"), len(enc.candidates)),
            int(d.get("policy_version", 0)),
        )
    except MalformedRecord:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedRecord(str(exc)) from exc


def early_record(e: EarlyReward) -> list[Any]:
    """A held early reward, as a checkpoint keeps it."""
    src = e.source.to_json() if isinstance(e.source, Source) else None
    return [e.domain, e.event_id, e.reward, e.deadline, e.partition, src, e.timestamp]


def early_from_record(item: Any) -> EarlyReward:
    try:
        domain, event_id, reward, deadline, partition, src, *rest = item
        # Format 1 kept no record time: counted in time, as it was then.
        stamp = float(rest[0]) if rest else 0.0
        return EarlyReward(
            str(domain),
            str(event_id),
            float(reward),
            float(deadline),
            int(partition),
            None if src is None else Source.from_json(src),
            stamp,
        )
    except (TypeError, ValueError) as exc:
        raise MalformedRecord(f"an early reward is malformed: {exc}") from exc

"""The state as JSON, one encoder and one decoder per record: decisions (in checkpoints,
the state topic, the joined log and replay), early rewards, finished joins, a domain's
metadata, and a checkpoint's whole meta.

Reading validates every field (against the feature dimension where it applies), so a
corrupt checkpoint or log line is refused by name instead of reaching a policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from numpy.typing import NDArray

from policies.features import EncodedContext, Sparse
from stream.core.domain import DomainInfo
from stream.core.early import EarlyReward
from stream.core.finished import Finished
from stream.core.join import Pending
from stream.errors import StreamError
from stream.kafka.deadletter import Source


class MalformedRecord(StreamError, ValueError):
    """A record (a decision, an early reward, a checkpoint's meta) that does not hold
    what its fields promise."""


PolicyState = tuple[dict[str, Any], dict[str, NDArray[Any]]]


@dataclass
class SnapshotMeta:
    """A checkpoint's state beside its policies' arrays and its offsets."""

    n_features: int = 0  # the feature pipeline the state was built with
    seed: int = 0
    domains: dict[str, DomainInfo] = field(default_factory=dict)
    early: list[EarlyReward] = field(default_factory=list)  # rewards held for contexts
    finished: list[Finished] = field(default_factory=list)  # the finished-join memory
    # "topic|partition" -> domain -> the offset from which its messages are to apply
    valid_from: dict[str, dict[str, int]] = field(default_factory=dict)
    epochs: dict[int, int] = field(default_factory=dict)  # partition -> writer's epoch
    marks: dict[int, int] = field(default_factory=dict)  # partition -> decisions mark


@dataclass
class Snapshot:
    """Everything a restart needs; ``domains[domain][role]`` is a policy's state."""

    domains: dict[str, dict[str, PolicyState]]
    pending: list[Pending] = field(default_factory=list)  # decisions awaiting a reward
    buffered: list[tuple[Pending, float]] = field(default_factory=list)  # joined, unlearned
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to read
    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    version: int = 0
    created: float = 0.0
    # Lists the finished joins, off the loop thread (see :meth:`complete`).
    listing: Callable[[], list[Finished]] | None = None

    def complete(self) -> Snapshot:
        """Fill in what the snapshot deferred (the writer's first step)."""
        if self.listing is not None:
            self.meta.finished, self.listing = self.listing(), None
        return self


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


def pending_records(
    pending: list[Pending], buffered: list[tuple[Pending, float]]
) -> list[dict[str, Any]]:
    """Decisions awaiting a reward, then those joined and not learned yet (+ "reward")."""
    out = [decision_record(p) for p in pending]
    out.extend({**decision_record(p), "reward": r} for p, r in buffered)
    return out


def pending_from_records(
    items: Any, n_features: int
) -> tuple[list[Pending], list[tuple[Pending, float]]]:
    if not isinstance(items, list):
        raise MalformedRecord("pending decisions must be a list")
    pending: list[Pending] = []
    buffered: list[tuple[Pending, float]] = []
    for item in items:
        if not isinstance(item, dict):
            raise MalformedRecord("a pending decision must be an object")
        p = pending_from_record(item, n_features)
        if "reward" not in item:
            pending.append(p)
            continue
        reward = item["reward"]
        if isinstance(reward, bool) or not isinstance(reward, int | float):
            raise MalformedRecord(f"a buffered reward is malformed: {reward!r}")
        if not math.isfinite(reward):
            raise MalformedRecord(f"a buffered reward is malformed: {reward!r}")
        buffered.append((p, float(reward)))
    return pending, buffered


def finished_record(f: Finished) -> list[Any]:
    return [f.domain, f.event_id, f.joined, f.deadline]


def finished_from_record(item: Any) -> Finished:
    try:
        domain, event_id, joined, deadline = item
        return Finished(str(domain), str(event_id), bool(joined), float(deadline))
    except (TypeError, ValueError) as exc:
        raise MalformedRecord(f"a finished join is malformed: {exc}") from exc


def info_record(info: DomainInfo) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(info)
    return out


def info_from_record(obj: Any) -> DomainInfo:
    try:
        return msgspec.convert(obj, DomainInfo)
    except msgspec.ValidationError as exc:
        raise MalformedRecord(f"a domain's metadata is malformed: {exc}") from exc


def meta_record(meta: SnapshotMeta) -> dict[str, Any]:
    """A checkpoint's meta as JSON (the SQLite store's ``meta`` column)."""
    return {
        "features": {"n_features": meta.n_features, "seed": meta.seed},
        "domains": {d: info_record(i) for d, i in meta.domains.items()},
        "early_rewards": [early_record(e) for e in meta.early],
        "finished": [finished_record(f) for f in meta.finished],
        "valid_from": meta.valid_from,
        "epochs": {str(p): e for p, e in meta.epochs.items()},
        "marks": {str(p): m for p, m in meta.marks.items()},
    }


def meta_from_record(obj: Any) -> SnapshotMeta:
    """The meta :func:`meta_record` wrote (earlier formats lack some of it)."""
    if not isinstance(obj, dict):
        raise MalformedRecord("a checkpoint's meta must be an object")
    feats = obj.get("features") or {}
    try:
        n_features, seed = int(feats.get("n_features", 0)), int(feats.get("seed", 0))
        valid_from = {
            str(k): {str(d): int(o) for d, o in table.items()}
            for k, table in (obj.get("valid_from") or {}).items()
        }
        epochs = {int(p): int(e) for p, e in (obj.get("epochs") or {}).items()}
        marks = {int(p): int(m) for p, m in (obj.get("marks") or {}).items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise MalformedRecord(f"a checkpoint's meta is malformed: {exc}") from exc
    return SnapshotMeta(
        n_features,
        seed,
        {str(d): info_from_record(i) for d, i in (obj.get("domains") or {}).items()},
        [early_from_record(e) for e in obj.get("early_rewards") or []],
        [finished_from_record(f) for f in obj.get("finished") or []],
        valid_from,
        epochs,
        marks,
    )

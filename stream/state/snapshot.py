"""The service's state <-> checkpoint snapshots: what is saved, and how it is restored."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policies.base import PolicyError
from policies.estimators import OnlineEstimate
from policies.features import FeatureHasher, FeatureIndex
from policies.registry import policy_class
from stream.core.domain import BASELINE_ROLE, DomainState
from stream.core.domains import Domains
from stream.core.finished import Finished
from stream.core.join import PendingJoins
from stream.errors import ConfigError
from stream.state.records import (
    MalformedRecord,
    decision_record,
    early_from_record,
    early_record,
    pending_from_record,
)
from stream.state.store import CheckpointError, CheckpointStore, CorruptCheckpoint, Snapshot

log = logging.getLogger(__name__)


def take_snapshot(
    domains: Domains,
    joins: PendingJoins,
    hasher: FeatureHasher,
    offsets: dict[tuple[str, int], int],
    finished_until: Mapping[int, float] | None = None,
) -> Snapshot:
    """A consistent copy of the state (call between turns, buffers learned). Finished
    joins whose window closed before ``finished_until`` (per partition) are left out."""
    states = {}
    info = {}
    # The arrays are referenced, not copied: copy-on-write from here.
    domains.learner.begin_write(domains.states.values())
    for name, st in domains.states.items():
        states[name] = {role: pol.state_dict() for role, pol in st.roles().items()}
        info[name] = {
            "estimates": {role: acc.state() for role, acc in st.estimates.items()},
            "actions": sorted(st.actions),
            "decisions": st.decisions,
            "rewards_joined": st.rewards_joined,
            "reward_sum": st.reward_sum,
            "expired": st.expired,
            "partition": st.partition,
            "feature_index": None if st.index is None else st.index.tokens(),
        }
    meta = {
        "features": {"n_features": hasher.n_features, "seed": hasher.seed},
        "domains": info,
        "early_rewards": [early_record(e) for e in joins.early.items()],
        # Listed by encode_pending, off the loop thread.
        "finished": (joins.finished.copy(), dict(finished_until or {})),
    }
    # Pending decisions are never mutated once made: the snapshot keeps references and
    # `encode_pending` turns them into JSON later, off the loop thread. Joined rewards not
    # learned yet go with their decision, so a checkpoint need not force a learn.
    items: list[Any] = joins.items()
    for st in domains.states.values():
        items.extend(st.buffer)
    return Snapshot(states, items, dict(offsets), meta)


def encode_pending(snap: Snapshot) -> Snapshot:
    """Replace the snapshot's pending decisions by their JSON form (for the writer); a
    joined reward awaiting its learn is its decision's JSON plus ``"reward"``. The
    finished joins are listed likewise."""
    out: list[dict[str, Any]] = []
    for p in snap.pending:
        if isinstance(p, dict):
            out.append(p)
        elif isinstance(p, tuple):
            out.append({**decision_record(p[0]), "reward": p[1]})
        else:
            out.append(decision_record(p))
    snap.pending = out
    finished = snap.meta.get("finished")
    if isinstance(finished, tuple):
        copy, until = finished
        parts = {d: i.get("partition", -1) for d, i in snap.meta["domains"].items()}
        snap.meta["finished"] = [
            [f.domain, f.event_id, f.joined, f.deadline]
            for f in copy.items()
            if f.deadline >= until.get(parts.get(f.domain, -1), float("-inf"))
        ]
    return snap


def finished_by_domain(snap: Snapshot) -> dict[str, list[list[Any]]]:
    """The encoded snapshot's finished joins per domain, without the domain."""
    out: dict[str, list[list[Any]]] = {}
    for d, *rest in snap.meta.get("finished", []):
        out.setdefault(d, []).append(rest)
    return out


def partition_of(snap: Snapshot, domain: str) -> int:
    """The input partition a snapshot's domain was read from (-1: unknown)."""
    p = snap.meta.get("domains", {}).get(domain, {}).get("partition", -1)
    return p if isinstance(p, int) else -1


def restore(
    snap: Snapshot,
    domains: Domains,
    joins: PendingJoins,
    hasher: FeatureHasher,
    partitions: set[int] | None = None,
) -> set[str]:
    """Load a snapshot's domains (those of ``partitions``, or all) into the state, replacing
    any same-named ones; raises on anything inconsistent. Returns the domains loaded."""
    feats = snap.meta.get("features", {})
    if feats != {"n_features": hasher.n_features, "seed": hasher.seed}:
        raise ConfigError(
            f"the checkpoint's features {feats} differ from RL_FEATURE_DIM/RL_SEED "
            f"({hasher.n_features}/{hasher.seed}); restore them or use a new RL_STATE_DIR"
        )
    info = snap.meta.get("domains", {})
    loaded: set[str] = set()
    for name, roles in snap.domains.items():
        if partitions is not None and partition_of(snap, name) not in partitions:
            continue
        if BASELINE_ROLE not in roles:
            raise CorruptCheckpoint(f"domain {name!r} has no served policy")
        policies = {
            role: policy_class(str(meta.get("policy"))).from_state(meta, arrays)
            for role, (meta, arrays) in roles.items()
        }
        d = info.get(name, {})
        st = DomainState(name, policies.pop(BASELINE_ROLE))
        try:
            for role, pol in policies.items():
                st.set_role(role, pol)
            st.estimates = {
                role: OnlineEstimate.from_state(v) for role, v in d.get("estimates", {}).items()
            }
        except ValueError as exc:
            raise CorruptCheckpoint(f"domain {name!r}: {exc}") from exc
        st.actions = set(d.get("actions", []))
        st.decisions = int(d.get("decisions", 0))
        st.rewards_joined = int(d.get("rewards_joined", 0))
        st.reward_sum = float(d.get("reward_sum", 0.0))
        st.expired = int(d.get("expired", 0))
        st.partition = partition_of(snap, name)
        tokens = d.get("feature_index")  # absent before the index: the domain keeps hashing
        if tokens is not None:
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise CorruptCheckpoint(f"domain {name!r}: bad feature index")
            try:
                st.index = FeatureIndex(hasher.n_features, tokens)
            except PolicyError as exc:
                raise CorruptCheckpoint(f"domain {name!r}: {exc}") from exc
        domains.put(st)
        loaded.add(name)
    now = time.time()
    for item in snap.pending:
        try:
            p = pending_from_record(item, hasher.n_features)
        except MalformedRecord as exc:
            raise CorruptCheckpoint(f"a pending decision is malformed: {exc}") from exc
        if "reward" in item:  # joined, learned at the domain's next update
            if p.domain in loaded:
                reward = item["reward"]
                if not isinstance(reward, int | float) or not math.isfinite(reward):
                    raise CorruptCheckpoint(f"a buffered reward is malformed: {reward!r}")
                domains.learner.add(domains.states[p.domain], p, float(reward), now)
            continue
        if (partitions is None or p.domain in loaded) and (p.domain, p.event_id) not in joins:
            joins.add(p, partition_of(snap, p.domain))
    for item in snap.meta.get("early_rewards", []):
        try:
            early = early_from_record(item)
        except MalformedRecord as exc:
            raise CorruptCheckpoint(str(exc)) from exc
        if partitions is None or early.partition in partitions:
            joins.early.restore(early)
    finished = []
    for item in snap.meta.get("finished", []):
        try:
            domain, event_id, joined, deadline = item
            f = Finished(str(domain), str(event_id), bool(joined), float(deadline))
        except (TypeError, ValueError) as exc:
            raise CorruptCheckpoint(f"a finished join is malformed: {exc}") from exc
        if partitions is None or f.domain in loaded:
            finished.append(f)
    joins.finished.restore(finished)
    return loaded


def open_store(state_dir: Path, keep: int) -> CheckpointStore:
    """The local store; a file SQLite cannot open or finds damaged is moved aside and a
    new one started, so the partitions' state comes from the state topic instead."""
    path = Path(state_dir) / "checkpoints.sqlite"
    try:
        store = CheckpointStore(path, keep=keep)
        problem = store.damage()
        if problem is None:
            return store
        store.close()
    except CheckpointError as exc:
        problem = str(exc)
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            part.rename(Path(f"{aside}{suffix}"))
    log.error(
        "local checkpoint store %s is damaged (%s): moved to %s; each partition's state "
        "is restored from the state topic instead",
        path,
        problem,
        aside,
    )
    return CheckpointStore(path, keep=keep)

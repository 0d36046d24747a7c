"""The service's state <-> checkpoint snapshots: what is saved, and how it is restored."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from policies.features import FeatureHasher
from policies.registry import policy_class
from stream.core.domain import BASELINE_ROLE, DomainInfo, DomainState
from stream.core.domains import Domains
from stream.core.finished import Finished
from stream.core.join import PendingJoins
from stream.errors import ConfigError
from stream.state.records import Snapshot, SnapshotMeta
from stream.state.store import CheckpointError, CheckpointStore, CorruptCheckpoint

log = logging.getLogger(__name__)


def take_snapshot(
    domains: Domains,
    joins: PendingJoins,
    hasher: FeatureHasher,
    offsets: dict[tuple[str, int], int],
    finished_until: Mapping[int, float] | None = None,
) -> Snapshot:
    """A consistent copy of the state (call between turns). Finished joins whose window
    closed before ``finished_until`` (per partition) are left out."""
    # The arrays are referenced, not copied: copy-on-write from here.
    domains.learner.begin_write(domains.states.values())
    states = {
        name: {role: pol.state_dict() for role, pol in st.roles().items()}
        for name, st in domains.states.items()
    }
    meta = SnapshotMeta(
        hasher.n_features,
        hasher.seed,
        {name: st.info() for name, st in domains.states.items()},
        joins.early.items(),
    )
    # Pending decisions are never mutated once made: the snapshot keeps references, and
    # the writer encodes them off the loop thread. Joined rewards not learned yet go with
    # their decision, so a checkpoint need not force a learn.
    buffered = [item for st in domains.states.values() for item in st.buffer]
    snap = Snapshot(states, joins.items(), buffered, dict(offsets), meta)
    copy, until = joins.finished.copy(), dict(finished_until or {})
    parts = {d: i.partition for d, i in meta.domains.items()}

    def listing() -> list[Finished]:
        never = float("-inf")
        return [f for f in copy.items() if f.deadline >= until.get(parts.get(f.domain, -1), never)]

    snap.listing = listing
    return snap


def restore(
    snap: Snapshot,
    domains: Domains,
    joins: PendingJoins,
    hasher: FeatureHasher,
    partitions: set[int] | None = None,
) -> set[str]:
    """Load a snapshot's domains (those of ``partitions``, or all) into the state, replacing
    any same-named ones; raises on anything inconsistent. Returns the domains loaded."""
    meta = snap.meta
    if (meta.n_features, meta.seed) != (hasher.n_features, hasher.seed):
        raise ConfigError(
            f"the checkpoint's features {{'n_features': {meta.n_features}, 'seed': "
            f"{meta.seed}}} differ from RL_FEATURE_DIM/RL_SEED "
            f"({hasher.n_features}/{hasher.seed}); restore them or use a new RL_STATE_DIR"
        )
    loaded: set[str] = set()
    for name, roles in snap.domains.items():
        info = meta.domains.get(name) or DomainInfo()
        if partitions is not None and info.partition not in partitions:
            continue
        if BASELINE_ROLE not in roles:
            raise CorruptCheckpoint(f"domain {name!r} has no served policy")
        policies = {
            role: policy_class(str(pmeta.get("policy"))).from_state(pmeta, arrays)
            for role, (pmeta, arrays) in roles.items()
        }
        st = DomainState(name, policies.pop(BASELINE_ROLE))
        try:
            for role, pol in policies.items():
                st.set_role(role, pol)
            st.restore(info, hasher.n_features)
        except ValueError as exc:
            raise CorruptCheckpoint(f"domain {name!r}: {exc}") from exc
        domains.put(st)
        loaded.add(name)
    now = time.time()
    for p, reward in snap.buffered:  # joined, learned at the domain's next update
        if p.domain in loaded:
            domains.learner.add(domains.states[p.domain], p, reward, now)
    for p in snap.pending:
        if (partitions is None or p.domain in loaded) and (p.domain, p.event_id) not in joins:
            joins.add(p, meta.domains[p.domain].partition if p.domain in meta.domains else -1)
    for early in meta.early:
        if partitions is None or early.partition in partitions:
            joins.early.restore(early)
    joins.finished.restore(
        [f for f in snap.complete().meta.finished if partitions is None or f.domain in loaded]
    )
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

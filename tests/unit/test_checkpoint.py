"""SQLite checkpoint store: round trip, retention, corruption fallback, no pickle."""

from __future__ import annotations

import logging
import sqlite3

import numpy as np
import pytest

from policies import Feedback, policy_class
from stream.state.records import Snapshot, SnapshotMeta
from stream.state.store import CheckpointError, CheckpointStore, CorruptCheckpoint
from tests.builders import context_batch, pending, trained


def snapshot(n_domains: int = 3) -> Snapshot:
    domains = {}
    for i in range(n_domains):
        roles = {}
        for name in ("epsilon_greedy", "doubly_robust", "offset_tree"):
            roles[name] = trained(name, i).state_dict()
        domains[f"dom{i}"] = roles
    offsets = {("ctx", 0): 41, ("ctx", 1): 7, ("rew", 0): 13}
    return Snapshot(
        domains,
        [pending("dom0", "e1")],
        [(pending("dom0", "e0"), 1.0)],  # joined, learned at the next update
        offsets,
        SnapshotMeta(n_features=4, seed=0),
    )


def test_round_trip_restores_identical_policies(tmp_path):
    store = CheckpointStore(tmp_path / "state.db")
    snap = snapshot()
    v = store.write(snap)
    got = store.latest()
    assert got is not None and got.version == v
    assert got.offsets == snap.offsets and got.meta == snap.meta
    assert got.pending == snap.pending and got.buffered == snap.buffered
    for domain, roles in snap.domains.items():
        for role, (meta, arrays) in roles.items():
            meta2, arrays2 = got.domains[domain][role]
            assert meta2 == meta
            for k, a in arrays.items():
                assert arrays2[k].dtype == a.dtype and np.array_equal(arrays2[k], a)
            restored = policy_class(role).from_state(meta2, arrays2)
            original = policy_class(role).from_state(meta, arrays)
            X = np.hstack([np.ones((10, 1)), np.random.default_rng(1).random((10, 3))])
            b = context_batch(X, keys="x")
            assert np.array_equal(restored.choose(b).row, original.choose(b).row)


def test_keeps_only_the_last_versions(tmp_path):
    store = CheckpointStore(tmp_path / "state.db", keep=3)
    versions = [store.write(snapshot(1)) for _ in range(6)]
    assert [v.version for v in store.versions()] == versions[::-1][:3]
    with sqlite3.connect(store.path) as db:  # the file itself: old arrays really gone
        n_arrays = db.execute("SELECT COUNT(DISTINCT version) FROM array").fetchone()[0]
    assert n_arrays == 3


def test_corrupt_newest_is_reported_and_the_previous_loads(tmp_path, caplog):
    path = tmp_path / "state.db"
    store = CheckpointStore(path)
    first = store.write(snapshot(1))
    newest = store.write(snapshot(2))
    store.close()
    db = sqlite3.connect(path)
    db.execute(
        "UPDATE array SET data = zeroblob(length(data)) WHERE version = ? AND rowid IN "
        "(SELECT rowid FROM array WHERE version = ? LIMIT 1)",
        (newest, newest),
    )
    db.commit()
    db.close()
    store = CheckpointStore(path)
    with pytest.raises(CorruptCheckpoint):
        store.load(newest)
    with caplog.at_level(logging.ERROR):
        got = store.latest()
    assert got is not None and got.version == first
    assert f"checkpoint version {newest} fails its digest check" in caplog.text


def test_truncated_file_is_reported_clearly(tmp_path):
    path = tmp_path / "state.db"
    store = CheckpointStore(path)
    store.write(snapshot(1))
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    for extra in tmp_path.glob("state.db-*"):
        extra.unlink()
    with pytest.raises(CheckpointError, match="state.db"):
        store = CheckpointStore(path)
        store.latest()


def test_object_arrays_are_never_stored_or_read(tmp_path):
    store = CheckpointStore(tmp_path / "state.db")
    bad = Snapshot({"d": {"p": ({}, {"x": np.array([object()], dtype=object)})}})
    with pytest.raises(CheckpointError, match="not storable"):
        store.write(bad)
    v = store.write(Snapshot({"d": {"p": ({}, {"x": np.zeros(3)})}}))
    with sqlite3.connect(store.path) as db:  # tampered on disk
        db.execute("UPDATE array SET dtype = '|O' WHERE version = ?", (v,))
    with pytest.raises(CorruptCheckpoint):
        store.load(v)


def test_checkpoint_cli_lists_shows_and_rolls_back(tmp_path, monkeypatch, capsys):
    from stream.cli import main
    from stream.core.domain import BASELINE_ROLE

    monkeypatch.setenv("RL_STATE_DIR", str(tmp_path))
    store = CheckpointStore(tmp_path / "checkpoints.sqlite")
    early = trained("epsilon_greedy", 0)
    v1 = store.write(Snapshot({"shop": {BASELINE_ROLE: early.state_dict()}}))
    later = trained("epsilon_greedy", 1)
    later.learn(Feedback(*_one_batch()))
    store.write(Snapshot({"shop": {BASELINE_ROLE: later.state_dict()}}))
    store.close()
    assert main(["checkpoint", "list"]) == 0
    assert main(["checkpoint", "show", "shop"]) == 0
    out = capsys.readouterr().out
    assert "epsilon_greedy" in out and f"learned {later.n_learned}" in out
    assert main(["checkpoint", "show", "shop", "--at", str(v1)]) == 0
    assert f"learned {early.n_learned}" in capsys.readouterr().out
    assert main(["checkpoint", "rollback", "shop", str(v1)]) == 0
    snap = CheckpointStore(tmp_path / "checkpoints.sqlite").latest()
    assert (
        snap is not None and snap.domains["shop"][BASELINE_ROLE][0]["n_learned"] == early.n_learned
    )


def _one_batch():
    b = context_batch(np.ones((1, 4)), keys=["z"])
    return b, np.array([1]), np.array([1.0]), np.array([0.5])


def test_snapshot_arrays_stay_frozen_while_the_domain_keeps_learning(tmp_path, monkeypatch):
    """Copy-on-write: learning during an in-flight write never changes the snapshot."""
    from policies.features import FeatureHasher
    from stream.config import load_settings
    from stream.core.domain import BASELINE_ROLE
    from stream.core.domains import Domains
    from stream.core.join import Pending, PendingJoins
    from stream.state.snapshot import take_snapshot

    settings = load_settings(state_dir=tmp_path)
    h = FeatureHasher(settings.feature_dim)
    doms = Domains(settings, h)
    st = doms.get_or_create("d")
    enc = h.encode({"x": 1.0}, ["a", "b"])
    joins = PendingJoins(10, 3600)
    first = Pending("d", "e0", enc, 1, 0.5, "epsilon_greedy", "control", 0.0, 1e12)
    doms.learner.add(st, first, 1.0, 0.0)
    doms.learner.learn(0.0, force=True)  # arrays are non-empty before the snapshot
    snap = take_snapshot(doms, joins, h, {})
    frozen = {k: v.copy() for k, v in snap.domains["d"][BASELINE_ROLE][1].items()}
    p = Pending("d", "e", enc, 1, 0.5, "epsilon_greedy", "control", 0.0, 1e12)
    doms.learner.add(st, p, 1.0, 0.0)
    doms.learner.learn(0.0, force=True)  # learns while the write is "in flight"
    assert st.baseline.n_learned == 2
    for k, v in snap.domains["d"][BASELINE_ROLE][1].items():
        assert np.array_equal(v, frozen[k]), k
    assert snap.domains["d"][BASELINE_ROLE][0]["n_learned"] == 1


def test_a_domain_being_written_learns_after_the_write_without_a_clone(tmp_path):
    """While a checkpoint's write is in flight its domains keep deciding on the same policy
    objects and learn once it is written (a forced learn still clones, as above)."""
    from policies.features import FeatureHasher
    from stream.config import load_settings
    from stream.core.domain import BASELINE_ROLE
    from stream.core.domains import Domains
    from stream.core.join import Pending, PendingJoins
    from stream.core.learner import WRITE_WAIT_S
    from stream.kafka.codec import ContextEvent
    from stream.state.snapshot import take_snapshot

    settings = load_settings(state_dir=tmp_path, update_interval=1)
    h = FeatureHasher(settings.feature_dim)
    doms = Domains(settings, h)
    st = doms.get_or_create("d")
    enc = h.encode({"x": 1.0}, ["a", "b"])
    snap = take_snapshot(doms, PendingJoins(10, 3600), h, {})
    policy, arrays = st.baseline, snap.domains["d"][BASELINE_ROLE][1]
    frozen = {k: v.copy() for k, v in arrays.items()}
    doms.decide(st, [ContextEvent("e1", "d", {"x": 2.0}, ["a", "b", "new"])])
    p = Pending("d", "e", enc, 1, 0.5, "epsilon_greedy", "control", 0.0, 1e12)
    doms.learner.add(st, p, 1.0, 0.0)  # full (update_interval 1) and old enough
    assert doms.learner.learn(100.0) == 0 and st.buffer  # waits for the write
    assert st.baseline is policy and st.baseline.n_learned == 0
    for k, v in arrays.items():
        assert np.array_equal(v, frozen[k]), k
    doms.learner.end_write()  # the checkpointer's finish()
    assert doms.learner.learn(100.0) == 1 and not st.buffer
    assert st.baseline is policy and policy.n_learned == 1

    # A stalled write holds learning back WRITE_WAIT_S at most; then the domain clones.
    snap = take_snapshot(doms, PendingJoins(10, 3600), h, {})
    arrays = snap.domains["d"][BASELINE_ROLE][1]
    frozen = {k: v.copy() for k, v in arrays.items()}
    doms.learner.add(st, p, 0.0, 0.0)
    assert doms.learner.learn(100.0) == 0
    doms.learner._frozen_since -= WRITE_WAIT_S
    assert doms.learner.learn(100.0) == 1 and st.baseline is not policy
    assert st.baseline.n_learned == 2 and policy.n_learned == 1
    for k, v in arrays.items():
        assert np.array_equal(v, frozen[k]), k


def _domains(tmp_path, monkeypatch):
    from policies.features import FeatureHasher
    from stream.config import load_settings
    from stream.core.domains import Domains

    settings = load_settings(state_dir=tmp_path, update_interval=100)
    h = FeatureHasher(settings.feature_dim)
    return settings, h, Domains(settings, h)


def test_joined_rewards_awaiting_their_learn_are_checkpointed_not_lost(tmp_path, monkeypatch):
    """A periodic checkpoint stores the reward buffers; a restore learns them later."""
    from stream.core.join import Pending, PendingJoins
    from stream.state.snapshot import open_store, restore, take_snapshot

    settings, h, doms = _domains(tmp_path, monkeypatch)
    st = doms.get_or_create("d", partition=0)
    enc = h.encode({"x": 1.0}, ["a", "b"])
    joins = PendingJoins(10, 3600)
    joins.add(Pending("d", "waiting", enc, 0, 0.5, "epsilon_greedy", "control", 0.0, 1e12))
    for i in range(3):
        p = Pending("d", f"e{i}", enc, 1, 0.25, "epsilon_greedy", "control", 0.0, 1e12)
        doms.learner.add(st, p, 0.75, 0.0)
    store = open_store(tmp_path, 5)
    store.write(take_snapshot(doms, joins, h, {("c", 0): 9}))
    snap = store.latest()
    assert snap is not None

    _, _, fresh = _domains(tmp_path, monkeypatch)
    joins2 = PendingJoins(10, 3600)
    restore(snap, fresh, joins2, h)
    got = fresh.states["d"]
    assert [(p.event_id, p.probability, r) for p, r in got.buffer] == [
        (f"e{i}", 0.25, 0.75) for i in range(3)
    ]
    assert [p.event_id for p in joins2.items()] == ["waiting"]
    assert got.baseline.n_learned == 0
    assert fresh.learner.learn(0.0, force=True) == 3
    assert got.baseline.n_learned == 3


def test_learning_is_spread_over_turns_by_a_time_budget(tmp_path, monkeypatch):
    from stream.core.join import Pending

    settings, h, doms = _domains(tmp_path, monkeypatch)
    enc = h.encode({"x": 1.0}, ["a", "b"])
    for i in range(50):
        st = doms.get_or_create(f"d{i}")
        doms.learner.add(st, Pending(st.name, "e", enc, 1, 0.5, "eg", "control", 0, 1), 1.0, 0.0)
    assert doms.learner.learn(0.0) == 0  # one reward each, not yet due
    now = 10.0  # every buffer is now older than RL_UPDATE_MAX_DELAY_S, all at once
    assert doms.learner.learn(now, budget_s=0.0) == 1  # the oldest, then the budget is spent
    assert doms.states["d0"].baseline.n_learned == 1
    assert doms.learner.learn(now) == 49  # the rest, oldest first
    assert all(st.baseline.n_learned == 1 for st in doms.states.values())


def test_learning_keeps_pace_with_joining_whatever_the_budget(tmp_path, monkeypatch):
    from stream.core.join import Pending

    settings, h, doms = _domains(tmp_path, monkeypatch)
    enc = h.encode({"x": 1.0}, ["a", "b"])
    k = settings.update_interval
    for turn in range(20):  # each turn fills 30 domains' buffers (due by count)
        for i in range(30):
            st = doms.get_or_create(f"d{i}")
            for j in range(k):
                p = Pending(st.name, f"{turn}-{j}", enc, 1, 0.5, "eg", "control", 0, 1)
                doms.learner.add(st, p, 1.0, 0.0)
        assert doms.learner.learn(0.0, budget_s=0.0) == 30 * k  # all of this turn's joins
    assert sum(len(st.buffer) for st in doms.states.values()) == 0


def test_a_full_buffer_is_learned_before_older_ones_are_due(tmp_path, monkeypatch):
    from stream.core.join import Pending

    settings, h, doms = _domains(tmp_path, monkeypatch)
    enc = h.encode({"x": 1.0}, ["a", "b"])
    k = settings.update_interval
    old = doms.get_or_create("old")  # one reward: due only by age
    doms.learner.add(old, Pending("old", "e", enc, 1, 0.5, "eg", "control", 0, 1), 1.0, 0.0)
    busy = [doms.get_or_create(f"busy{i}") for i in range(3)]
    for st in busy:
        for j in range(k):
            p = Pending(st.name, f"e{j}", enc, 1, 0.5, "eg", "control", 0, 1)
            doms.learner.add(st, p, 1.0, 0.0)
    doms.learner._arrived = 0  # no joining floor: the budget alone decides
    assert doms.learner.learn(0.0, budget_s=0.0) == k  # the first full one, then over budget
    assert doms.learner.learn(0.0, budget_s=0.0) == k  # the next full one was kept listed
    assert doms.learner.learn(0.0) == k
    assert old.baseline.n_learned == 0 and len(old.buffer) == 1  # not due yet
    assert doms.learner.learn(10.0) == 1  # now old enough
    assert all(st.baseline.n_learned == k for st in busy)


def test_a_domains_feature_index_is_saved_and_restored(tmp_path):
    """A feature keeps its slot across a checkpoint (SQLite) and a state-topic record; a
    domain checkpointed before the index existed keeps hashing."""
    from policies.features import FeatureHasher
    from stream.config import load_settings
    from stream.core.domains import Domains
    from stream.core.join import PendingJoins
    from stream.kafka.codec import ContextEvent
    from stream.state.snapshot import restore, take_snapshot
    from stream.state.store import CheckpointStore
    from stream.state.topic import decode_domain, encode_domain

    settings = load_settings(state_dir=tmp_path)
    h = FeatureHasher(settings.feature_dim)
    doms, joins = Domains(settings, h), PendingJoins(10, 3600)
    st = doms.get_or_create("d", 0)
    doms.decide(st, [ContextEvent("e1", "d", {"b": 1.0, "a": "x"}, ["p", "q"])])
    assert st.index is not None and st.index.tokens() == ["b", "a=x"]
    snap = take_snapshot(doms, joins, h, {("ctx", 0): 5}).complete()
    doms.learner.end_write()

    def restored(s):
        fresh = Domains(settings, h)
        restore(s, fresh, PendingJoins(10, 3600), h)
        return fresh.states["d"].index

    store = CheckpointStore(tmp_path / "c.sqlite")
    assert restored(store.load(store.write(snap))).tokens() == ["b", "a=x"]
    record = encode_domain(snap, "d", 0, (5, 0))
    assert restored(decode_domain(record, ("ctx", "rew")).snapshot).tokens() == ["b", "a=x"]
    snap.meta.domains["d"].feature_index = None  # as a checkpoint of before
    assert restored(snap) is None


def test_checkpoint_cli_on_a_missing_state_dir_says_so_and_creates_nothing(
    tmp_path, monkeypatch, capsys
):
    from stream.cli import main

    missing = tmp_path / "typo"
    monkeypatch.setenv("RL_STATE_DIR", str(missing))
    assert main(["checkpoint", "list"]) == 1
    assert main(["checkpoint", "show", "shop"]) == 1
    assert "no checkpoints in" in capsys.readouterr().err
    assert not missing.exists()


def test_inspecting_a_store_changes_nothing_and_a_damaged_one_is_reported_in_place(
    tmp_path, monkeypatch, capsys
):
    from stream.cli import main
    from stream.core.domain import BASELINE_ROLE

    store = CheckpointStore(tmp_path / "checkpoints.sqlite")
    store.write(Snapshot({"shop": {BASELINE_ROLE: trained("epsilon_greedy", 0).state_dict()}}))
    store.close()

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir())}

    before = files()
    assert main(["checkpoint", "--state-dir", str(tmp_path), "list"]) == 0
    assert main(["checkpoint", "--state-dir", str(tmp_path), "show", "shop"]) == 0
    assert files() == before  # nothing created, moved or written
    capsys.readouterr()

    db = tmp_path / "checkpoints.sqlite"
    raw = bytearray(db.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)  # the schema page overwritten
    db.write_bytes(bytes(raw))
    before = files()
    monkeypatch.setenv("RL_STATE_DIR", str(tmp_path))
    assert main(["checkpoint", "list"]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint store {db} is damaged" in err and len(err.strip().splitlines()) == 1
    assert files() == before

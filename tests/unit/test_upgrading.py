"""State across versions (docs/upgrading.md): every older format is read, a newer one is
refused in one line and never restored around or moved aside."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from stream import Bandit
from stream.errors import NewerFormat
from stream.state.records import Snapshot
from stream.state.snapshot import open_store
from stream.state.store import SCHEMA_VERSION, CheckpointStore
from stream.state.topic import MAGIC, SCHEMA, decode_marker, encode_marker
from stream.state.topicreader import StateRecords

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOPICS = ("contexts", "rewards")
# Written by the state-topic format 1 code (c24a40e~1): a linucb domain, 30 events learned
# and 10 decided awaiting their rewards; then "probe" was decided with this distribution.
PROBE = {"a": 0.0033333333333333335, "b": 0.9933333333333333, "c": 0.0033333333333333335}


def test_a_format_1_record_restores_its_policy_and_pending_decisions_exactly(monkeypatch):
    data = (FIXTURES / "state-format1-domain.bin").read_bytes()
    (n,) = struct.unpack("<I", data[4:8])
    written = orjson.loads(data[40 : 40 + n])["created"]
    # The reward comes a minute after the record was written, inside its decisions' windows.
    monkeypatch.setattr("stream.bandit.time", SimpleNamespace(time=lambda: written + 60.0))
    bandit = Bandit.from_state(data, policy="linucb", update_interval=1, seed=3, feature_dim=8)
    assert bandit._state.baseline.n_learned == 30
    probe = bandit.decide({"country": "de", "basket": 2.0}, ["a", "b", "c"], "probe")
    assert probe.distribution == PROBE and probe.action == "b"
    assert bandit.learn("e35", reward=1.0) == "joined"  # decided before the upgrade
    marker = decode_marker((FIXTURES / "state-format1-marker.json").read_bytes())
    assert (marker.partition, marker.offsets, marker.heads) == (0, (40, 30), None)


def _newer_record(value: bytes) -> bytes:
    (n,) = struct.unpack("<I", value[4:8])
    head, body = orjson.loads(value[40 : 40 + n]), value[40 + n :]
    head["schema"] = SCHEMA + 1
    raw = orjson.dumps(head, option=orjson.OPT_SORT_KEYS)
    return MAGIC + struct.pack("<I", len(raw)) + hashlib.sha256(raw + body).digest() + raw + body


def test_a_newer_state_topic_format_stops_the_restore_in_one_line():
    record = _newer_record(Bandit("shop").state())
    with pytest.raises(NewerFormat, match=f"state format {SCHEMA + 1}, newer") as caught:
        StateRecords({"shop": record}, TOPICS).plan(0)
    assert "\n" not in str(caught.value)
    marker = orjson.loads(encode_marker(0, (1, 1)))
    marker["schema"] = SCHEMA + 1
    with pytest.raises(NewerFormat, match="partition 0 marker"):
        decode_marker(orjson.dumps(marker))


def test_a_newer_checkpoint_store_is_refused_and_left_in_place(tmp_path, monkeypatch, capsys):
    from stream.cli import main

    store = CheckpointStore(tmp_path / "checkpoints.sqlite")
    store.write(Snapshot({}))
    store.close()
    with sqlite3.connect(tmp_path / "checkpoints.sqlite") as db:  # as a later version writes
        db.execute("UPDATE checkpoint SET schema = ?", (SCHEMA_VERSION + 1,))
    files = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(NewerFormat, match="newer than this version reads"):
        open_store(tmp_path, 5)  # the service's start: not moved aside as damaged
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    monkeypatch.setenv("RL_STATE_DIR", str(tmp_path))
    assert main(["checkpoint", "list"]) == 1
    err = capsys.readouterr().err.strip()
    assert "newer than this version reads" in err and len(err.splitlines()) == 1


def test_a_newer_state_topic_is_not_retried_into_a_generic_error(monkeypatch):
    from types import SimpleNamespace

    import stream.state.ownership as ownership
    from stream.config import load_settings

    def newer(settings):
        raise NewerFormat("state record of 'shop' is in state format 9, newer than this reads")

    monkeypatch.setattr(ownership, "read_state_topic", newer)
    fake = SimpleNamespace(settings=load_settings())
    with pytest.raises(NewerFormat):  # at once: the operator's line, not "cannot be read"
        ownership.Ownership._read_topic(fake)  # type: ignore[arg-type]

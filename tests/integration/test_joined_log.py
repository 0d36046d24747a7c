"""The joined log of a running service, then `replay` and `tune` on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stream.joinedlog import read
from stream.offline.replay import replay_file
from stream.offline.tune import log_objective, tune
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration
BIN = str(Path(sys.executable).with_name("bandit-stream"))


def test_joined_log_replay_and_tune(settings_factory, start_service, client_factory, tmp_path):
    log_path = tmp_path / "joined.jsonl"
    settings = settings_factory(
        joined_log=str(log_path), reward_wait_s=3.0, update_interval=10, epsilon=0.3
    )
    running = start_service(settings)
    client = client_factory(settings)
    n = 600
    for i in range(n):
        client.context(f"j{i}", domain="shop", context={"x": float(i % 7), "seg": f"s{i % 3}"})
    decisions = {d["event_id"]: d for d in client.decisions(n)}
    for i in range(n - 20):  # the last 20 expire and are logged with the default reward
        d = decisions[f"j{i}"]
        client.reward(f"j{i}", 1.0 if d["action"] == "b" else 0.0, domain="shop")
    client.flush()
    svc = running.service
    wait_for(lambda: svc.stats.rewards_joined == n - 20, what="rewards joined")
    wait_for(lambda: svc.stats.expired == 20, timeout=20, what="the rest expired")
    running.stop()

    records = read(log_path)
    assert len(records) == n
    rec = next(r for r in records if r["event_id"] == "j0")
    d0 = decisions["j0"]
    assert rec["action"] == d0["action"] and rec["probability"] == d0["probability"]
    assert dict(zip(rec["candidates"], rec["distribution"], strict=True)) == d0["probabilities"]
    assert rec["policy"] == "epsilon_greedy" and rec["variant"] == "control"
    assert rec["n_features"] == settings.feature_dim
    # The domain's own slots in order of first sight: j0's x=0 adds nothing and takes none.
    assert rec["context"] == [[1], [1.0]]  # seg=s0
    rec1 = next(r for r in records if r["event_id"] == "j1")
    assert rec1["context"] == [[2, 3], [1.0, 1.0]]  # x=1, seg=s1
    assert sum(r["default_reward"] for r in records) == 20

    out = tmp_path / "replay"
    summary = replay_file(log_path, ["doubly_robust", "linucb"], settings, out)
    assert summary["events"] == n
    logged = summary["logging_policy"]["mean"]
    for name in ("doubly_robust", "linucb"):
        dr = summary["policies"][name]["dr"]
        assert dr["n"] == n and dr["low"] <= dr["value"] <= dr["high"]
        # Learning off-policy which action pays, they beat the exploring logging policy.
        assert dr["value"] > logged
    assert (out / "replay.png").stat().st_size > 1000
    assert orjson.loads((out / "replay.json").read_bytes())["curve"]["linucb"]

    result = tune(
        log_objective(records, "doubly_robust", settings, 0.25),
        "doubly_robust",
        3,
        tmp_path / "tune",
    )
    assert result["trials"] == 3 and 0.0 <= result["best_value"] <= 1.5
    assert any(line.startswith("RL_DR_ALPHA=") for line in result["env"])
    assert (tmp_path / "tune" / "tune.db").exists()

    # The command line prints the table and the ready-to-paste lines.
    cli = subprocess.run(
        [
            BIN,
            "tune",
            "--policy",
            "offset_tree",
            "--log",
            str(log_path),
            "--trials",
            "2",
            "--out",
            str(tmp_path / "tune2"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    assert "RL_OT_BASELINE=" in cli.stdout and "RL_OT_ALPHA=" in cli.stdout

"""A short convergence smoke test with fixed seeds, and the bench command's outputs."""

from __future__ import annotations

import json

import pytest

from policies import POLICIES
from stream.bench.convergence import run_one
from stream.bench.simulators import digits_sim, linear_sim, seed_sim
from stream.cli import main
from stream.config import load_settings


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_converges_on_the_seed_simulator(name):
    r = run_one(name, seed_sim(0), 0, load_settings(), update_interval=10, delay=0)
    # Best arm pays 0.8, uniform 0.5; the floor for every policy is 0.77.
    assert r.avg_reward >= 0.77
    assert r.optimal_share_last20 >= 0.9


@pytest.mark.parametrize("name", ["doubly_robust", "linucb"])
def test_contextual_policies_beat_the_best_fixed_arm(name):
    sim = linear_sim(0, rounds=4000)
    r = run_one(name, sim, 0, load_settings(), update_interval=10, delay=0)
    best_fixed = float(sim.expected.mean(axis=0).max())
    assert r.avg_reward > best_fixed + 0.05


def test_reward_delay_is_applied():
    sim = digits_sim(0, rounds=3000)
    fast = run_one("linucb", sim, 0, load_settings(), update_interval=10, delay=0)
    slow = run_one("linucb", sim, 0, load_settings(), update_interval=10, delay=1500)
    assert slow.avg_reward < fast.avg_reward


def test_bench_convergence_writes_json_markdown_and_png(tmp_path, monkeypatch):
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "convergence",
            "--policies",
            "epsilon_greedy,offset_tree",
            "--sims",
            "seed",
            "--seeds",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads((out / "convergence.json").read_text())
    assert len(data["rows"]) == 4
    for row in data["rows"]:
        assert set(row) >= {
            "policy",
            "simulator",
            "seed",
            "avg_reward",
            "regret",
            "optimal_share",
            "optimal_share_last20",
            "decisions_per_s",
        }
    assert "| epsilon_greedy | seed |" in (out / "convergence.md").read_text()
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_convergence_with_a_delay_reports_its_cost(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["bench", "convergence", "--policies", "linucb", "--sims", "seed", "--seeds", "1"]
    assert main([*argv, "--delay", "500", "--out", str(out)]) == 0
    assert "delay_cost" in capsys.readouterr().out
    data = json.loads((out / "convergence.json").read_text())
    (row,) = data["rows"]
    assert data["delay"] == 500
    # The cost is the same policy and seed without the delay minus with it.
    prompt = run_one("linucb", seed_sim(0), 0, load_settings(), update_interval=10, delay=0)
    assert row["delay_cost"] == pytest.approx(prompt.avg_reward - row["avg_reward"])
    assert row["delay_cost"] > 0  # 500 events of 5,000 decided before any learning
    assert "delay cost" in (out / "convergence.md").read_text()

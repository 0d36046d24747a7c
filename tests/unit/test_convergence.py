"""A short convergence smoke test with fixed seeds, and the bench command's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policies import POLICIES
from stream.bench.convergence import run_one
from stream.bench.simulators import SIMULATORS, digits_sim, fixed_sim, linear_sim
from stream.cli import build_parser, main
from stream.config import load_settings


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_converges_on_the_fixed_arms_simulator(name):
    r = run_one(name, fixed_sim(0), 0, load_settings(), update_interval=10, delay=0)
    # Best arm pays 0.8, uniform 0.5; the floor for every policy is 0.77.
    assert r.avg_reward >= 0.77
    assert r.optimal_share_last20 >= 0.9


@pytest.mark.parametrize("name", ["doubly_robust", "linucb"])
def test_contextual_policies_beat_the_best_fixed_arm(name):
    sim = linear_sim(0, rounds=4000)
    r = run_one(name, sim, 0, load_settings(), update_interval=10, delay=0)
    best_fixed = float(sim.expected.mean(axis=0).max())
    assert r.avg_reward > best_fixed + 0.05


@pytest.mark.parametrize("sim_name", ["linear", "changing", "drift", "categorical"])
def test_offset_tree_regrets_less_than_the_epsilon_greedy_baseline(sim_name):
    """Through the product path at default settings (8,000 rounds, seed 0: 257 vs 303,
    211 vs 314, 267 vs 321, 128 vs 256); the classic tree averaged less reward than the
    baseline on all four."""
    sim = SIMULATORS[sim_name](0)
    regret = {
        name: run_one(name, sim, 0, load_settings(), 10, 0, rounds=8000).regret
        for name in ("offset_tree", "epsilon_greedy")
    }
    assert regret["offset_tree"] < 0.9 * regret["epsilon_greedy"]


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
            "fixed",
            "--seeds",
            "2",
            "--features",
            "both",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads((out / "convergence.json").read_text())
    assert len(data["rows"]) == 8  # 2 policies x 2 seeds x (product path, raw matrix)
    assert {r["features"] for r in data["rows"]} == {"product", "raw"}
    assert data["feature_dim"] == 64
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
    md = (out / "convergence.md").read_text()
    assert "| epsilon_greedy | fixed | product |" in md and "| offset_tree | fixed | raw |" in md
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_convergence_with_a_delay_reports_its_cost(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["bench", "convergence", "--policies", "linucb", "--sims", "fixed", "--seeds", "1"]
    assert main([*argv, "--delay", "500", "--out", str(out)]) == 0
    assert "delay_cost" in capsys.readouterr().out
    data = json.loads((out / "convergence.json").read_text())
    (row,) = data["rows"]
    assert data["delay"] == 500
    # The cost is the same policy and seed without the delay minus with it.
    prompt = run_one("linucb", fixed_sim(0), 0, load_settings(), update_interval=10, delay=0)
    assert row["delay_cost"] == pytest.approx(prompt.avg_reward - row["avg_reward"])
    assert row["delay_cost"] > 0  # 500 events of 5,000 decided before any learning
    assert "delay cost" in (out / "convergence.md").read_text()


def _draws_follow_the_means(sim, t: int, n: int = 4000) -> None:
    """Round ``t``'s draws of each candidate: Bernoulli (0 or 1) with its mean, or its mean
    plus Gaussian noise of sd ``noise_sd`` where the simulator has noise."""
    rng = np.random.default_rng(7)
    for a in sim.candidates(t).tolist():
        mean = float(sim.mean(np.array([t]), np.array([a]))[0])
        r = sim.draw(np.full(n, t), np.full(n, a), rng)
        assert r.shape == (n,) and np.all(np.isfinite(r))
        if sim.noise_sd > 0:
            assert abs(r.mean() - mean) < 5 * sim.noise_sd / np.sqrt(n)
            assert r.std() == pytest.approx(sim.noise_sd, rel=0.1)
        else:
            assert set(np.unique(r).tolist()) <= {0.0, 1.0}
            assert abs(r.mean() - mean) <= 5 * np.sqrt(mean * (1 - mean) / n)


@pytest.mark.parametrize("sim_name", sorted(SIMULATORS))
def test_every_simulator_gives_contexts_candidates_and_a_best_reward(sim_name):
    sim = SIMULATORS[sim_name](0, rounds=300)
    K = len(sim.actions)
    assert sim.expected.shape[0] == sim.rounds == 300
    # Mean rewards are probabilities in the product's default reward range (0..1), noisy
    # simulator or not: only a noisy one's draws may leave it (checked below).
    assert np.all(np.isfinite(sim.expected))
    lo, hi = float(sim.expected.min()), float(sim.expected.max())
    assert lo >= 0.0 and hi <= 1.0, (lo, hi)
    _draws_follow_the_means(sim, t=150)
    for t in (0, 150, 299):
        ctx, cands = sim.context(t), sim.candidates(t)
        assert list(ctx) == sim.names and len(cands) >= 2 and set(cands) <= set(range(K))
        assert len(set(cands.tolist())) == len(cands)
        means = sim.mean(np.full(len(cands), t), cands)
        assert sim.best()[t] == pytest.approx(means.max())
        described = sim.candidate_features(t)
        if described is not None:
            assert list(described) == [sim.actions[a] for a in cands]
            assert all(list(f) == sim.item_names for f in described.values())
        for v, lv in zip(ctx.values(), sim.levels, strict=True):
            assert isinstance(v, str) == (lv is not None)
    assert sim.raw(0, 5).shape[0] == 5


def test_candidate_sets_change_and_drift_moves_the_best_action():
    changing = SIMULATORS["changing"](0, rounds=500)
    sizes = {len(changing.candidates(t)) for t in range(500)}
    assert sizes == {2, 3, 4, 5, 6}
    drift = SIMULATORS["drift"](0, rounds=4000)
    logit = np.log(drift.expected / (1 - drift.expected))

    def weights(sl: slice) -> np.ndarray:  # each action's logit is linear in the context
        return np.linalg.lstsq(drift.X[sl], logit[sl], rcond=None)[0]

    early, late = weights(slice(0, 1000)), weights(slice(3000, 4000))
    assert np.linalg.norm(early - late) > 0.5 * np.linalg.norm(early)
    best_early = np.argmax(drift.X[3000:] @ early, axis=1)
    assert np.mean(best_early == np.argmax(logit[3000:], axis=1)) < 0.6  # yesterday's best


@pytest.mark.parametrize("sim_name", ["categorical", "changing"])
def test_the_product_path_decides_among_each_rounds_candidates(sim_name):
    """String contexts and per-round candidate sets through the service's own pipeline;
    the raw matrix runs the same rounds."""
    sim = SIMULATORS[sim_name](0, rounds=3000)
    s = load_settings()
    product = run_one("linucb", sim, 0, s, update_interval=10, delay=0, features="product")
    raw = run_one("linucb", sim, 0, s, update_interval=10, delay=0, features="raw")
    assert (product.features, raw.features) == ("product", "raw")
    uniform = float(np.mean([sim.expected[t, sim.candidates(t)].mean() for t in range(3000)]))
    for r in (product, raw):
        assert r.avg_reward > uniform + 0.05  # it learns
        assert r.regret >= -1e-9  # regret against each round's own candidates


def test_items_reach_the_policy_with_their_features_and_cold_start_is_reported():
    """A catalogue of items (5 of 2,000 per round): their features travel as
    candidate_features through the product path and beside the context in the raw matrix;
    the reward on each item's first 10 impressions is reported."""
    sim = SIMULATORS["items"](0, rounds=600)
    assert sim.mean(np.array([3]), sim.candidates(3)[2:3])[0] == sim.expected[3, 2]
    s = load_settings()
    for feats in ("product", "raw"):
        r = run_one("linucb", sim, 0, s, update_interval=10, delay=0, features=feats)
        assert r.cold_reward is not None and 0.0 <= r.cold_reward <= 1.0
        assert r.regret >= -1e-9
    assert run_one("linucb", SIMULATORS["linear"](0, rounds=100), 0, s, 10, 0).cold_reward is None


def test_cold_reward_averages_each_actions_first_impressions():
    from stream.bench.convergence import COLD_IMPRESSIONS, _cold_reward

    sim = SIMULATORS["described"](0, rounds=50)
    chosen = np.array([0] * 15 + [1] * 3 + [0] * 2)
    rewards = np.array([1.0] * COLD_IMPRESSIONS + [0.0] * 5 + [0.0] * 3 + [1.0] * 2)
    assert _cold_reward(sim, chosen, rewards) == pytest.approx(10 / 13)  # 10 of a, 3 of b


def test_peers_are_measured_per_simulator_and_reported(monkeypatch, tmp_path):
    """Each installed peer's mean over seeds, per simulator, in the JSON, the Markdown and
    the printed table; a peer that is not installed (None) is left out."""
    from stream.bench import convergence, peers

    def fake(sim, seed, delay):
        return 0.5 + 0.1 * seed, 1000.0

    monkeypatch.setattr(peers, "PEERS", {"Fake peer": fake, "Absent": lambda *a: None})
    results, got = convergence.run(["epsilon_greedy"], ["fixed"], 2, 0, tmp_path, load_settings())
    assert got == {"Fake peer": {"fixed": {"avg_reward": 0.55, "decisions_per_s": 1000.0}}}
    data = json.loads((tmp_path / "convergence.json").read_text())
    assert data["peers"] == got
    assert "## Fake peer" in (tmp_path / "convergence.md").read_text()
    assert "Fake peer on fixed: 0.550" in convergence.print_table(results, got)


def test_rounds_sets_every_runs_length_and_no_bar_is_drawn_off_a_terminal(
    tmp_path, monkeypatch, capsys
):
    from stream.bench import convergence
    from stream.bench.report import progress_bar

    monkeypatch.setattr(convergence, "measure_peers", lambda sims, delay: {})
    results, _ = convergence.run(
        ["linucb"], ["linear", "items"], 1, 0, tmp_path, load_settings(), rounds=200
    )
    assert [len(r.regret_curve) for r in results] == [200, 200]  # one point per round
    assert "\r" not in capsys.readouterr().err  # pytest's stderr is not a terminal
    with progress_bar(total=3) as bar:
        assert bar.disable
    args = build_parser().parse_args(["bench", "convergence", "--rounds", "50"])
    assert args.rounds == 50

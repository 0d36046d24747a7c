"""`bandit-stream bench convergence`: policies learning online on simulated bandits.

Each policy runs in micro-batches of ``update_interval`` events (choose the batch, then
learn its rewards), optionally learning each reward only ``delay`` events later. With
``features="product"`` (the default) every round goes the way the service takes it: the
round's context as a dict (named numeric or string fields) and its candidates through the
service's feature pipeline at the settings' ``RL_FEATURE_DIM``, into the policy built as
the service builds a domain's; ``"raw"`` hands the policy the simulator's own feature
matrix (categorical fields one-hot) instead, which separates featurisation loss from the
policy's quality. With a delay, every run is repeated without it and the difference in
average reward is reported as the delay's cost.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies import ContextBatch, Feedback, create_policy
from policies.features import FeatureHasher, FeatureIndex
from policies.kernels import warm_up
from stream.bench.peers import measure_peers
from stream.bench.report import (
    machine,
    markdown_table,
    progress_bar,
    pyplot,
    write_json,
    write_markdown,
)
from stream.bench.simulators import SIMULATORS, Simulation
from stream.config import Settings
from stream.core.policy_config import build_policy, policy_params

FEATURES = ("product", "raw")
COLD_IMPRESSIONS = 10  # an action's first impressions, whose reward is reported as cold start


@dataclass
class RunResult:
    policy: str
    simulator: str
    seed: int
    features: str
    avg_reward: float
    regret: float
    optimal_share: float
    optimal_share_last20: float
    decisions_per_s: float
    regret_curve: list[float]
    delay_cost: float | None = None  # avg reward without the delay minus with it
    cold_reward: float | None = None  # avg reward on actions' first impressions (items)
    rounds: int = 0
    actions: int = 0  # the simulator's action names (candidates per round: fewer on slates)
    curve_every: int = 1  # rounds between points of regret_curve

    def row(self) -> dict[str, Any]:
        d = dict(vars(self))
        d.pop("regret_curve")
        return d


def _keys(sim: Simulation, t0: int, t1: int, tag: str) -> list[str]:
    return [f"{tag}-{t}" for t in range(t0, t1)]


def _raw_batch(
    sim: Simulation, t0: int, t1: int, tag: str, cands: list[NDArray[np.int64]]
) -> ContextBatch:
    X = np.hstack([np.ones((t1 - t0, 1)), sim.raw(t0, t1)])  # bias + the simulator's features
    sizes = np.array([len(c) for c in cands], dtype=np.int64)
    rows = np.repeat(X, sizes, axis=0)
    C = None
    if sim.item_features is not None:  # and each candidate's own features beside them
        items = sim.item_features[np.concatenate(cands)]
        rows = np.hstack([rows, items])
        C = np.hstack([np.zeros((len(items), X.shape[1])), items])
    return ContextBatch(
        rows,
        [sim.actions[a] for c in cands for a in c],
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        _keys(sim, t0, t1, tag),
        C,
    )


def _product_batch(
    sim: Simulation,
    t0: int,
    t1: int,
    tag: str,
    cands: list[NDArray[np.int64]],
    hasher: FeatureHasher,
    index: FeatureIndex,
) -> ContextBatch:
    encoded = [
        hasher.encode(sim.context(t), [sim.actions[a] for a in c], sim.candidate_features(t), index)
        for t, c in zip(range(t0, t1), cands, strict=True)
    ]
    return hasher.assemble(encoded, _keys(sim, t0, t1, tag))


def run_one(
    name: str,
    sim: Simulation,
    seed: int,
    settings: Settings,
    update_interval: int,
    delay: int,
    progress: Any = None,  # a progress_bar
    rounds: int | None = None,
    features: str = "product",
) -> RunResult:
    tag = f"{sim.name}-{seed}"
    hasher = FeatureHasher(settings.feature_dim, seed=settings.seed)  # as the service's
    index = FeatureIndex(settings.feature_dim)  # a new domain's
    if features == "product":
        policy = build_policy(name, tag, settings)  # a domain's policy, as the service's
    else:
        dim = sim.raw(0, 1).shape[1] + 1 + (0 if sim.item_features is None else len(sim.item_names))
        policy = create_policy(name, dim, seed, **policy_params(name, settings))
    rng = np.random.default_rng(seed + 1000)
    T = sim.rounds if rounds is None else min(rounds, sim.rounds)
    chosen = np.empty(T, dtype=np.int64)
    rewards = np.empty(T)
    queue: deque[tuple[int, Feedback]] = deque()  # (index of the batch's last event, feedback)
    busy = 0.0
    for t0 in range(0, T, update_interval):
        t1 = min(T, t0 + update_interval)
        cands = [sim.candidates(t) for t in range(t0, t1)]
        start = time.perf_counter()
        if features == "product":
            batch = _product_batch(sim, t0, t1, tag, cands, hasher, index)
        else:
            batch = _raw_batch(sim, t0, t1, tag, cands)
        dec = policy.choose(batch)
        busy += time.perf_counter() - start
        local = dec.row - batch.offsets[:-1]
        a = np.array([c[i] for c, i in zip(cands, local.tolist(), strict=True)], dtype=np.int64)
        ts = np.arange(t0, t1)
        r = sim.draw(ts, a, rng)
        chosen[t0:t1], rewards[t0:t1] = a, r
        queue.append((t1 - 1, Feedback(batch, dec.row, r, dec.probability)))
        start = time.perf_counter()
        while queue and queue[0][0] + delay < t1:
            policy.learn(queue.popleft()[1])
        busy += time.perf_counter() - start
        if progress is not None:
            progress.update(t1 - t0)
    best = sim.best()[:T]
    got = sim.mean(np.arange(T), chosen)
    optimal = got >= best - 1e-12
    last = int(T * 0.8)
    regret = np.cumsum(best - got)
    step = max(1, T // 200)
    return RunResult(
        name,
        sim.name,
        seed,
        features,
        float(rewards.mean()),
        float(regret[-1]),
        float(optimal.mean()),
        float(optimal[last:].mean()),
        T / busy if busy > 0 else float("inf"),
        regret[::step].tolist(),
        cold_reward=_cold_reward(sim, chosen, rewards),
        rounds=T,
        actions=len(sim.actions),
        curve_every=step,
    )


def _cold_reward(
    sim: Simulation, chosen: NDArray[np.int64], rewards: NDArray[np.float64]
) -> float | None:
    """Average reward of the decisions that served an action for one of its first
    ``COLD_IMPRESSIONS`` times, where actions are described by features (else None)."""
    if sim.item_features is None:
        return None
    order = np.argsort(chosen, kind="stable")  # each action's impressions in time order
    starts = np.searchsorted(chosen[order], chosen[order])
    cold = order[np.arange(len(order)) - starts < COLD_IMPRESSIONS]
    return float(rewards[cold].mean())


def run(
    policies: list[str],
    sims: list[str],
    seeds: int,
    delay: int,
    out: Path,
    settings: Settings,
    features: tuple[str, ...] = ("product",),
    rounds: int | None = None,
) -> tuple[list[RunResult], dict[str, Any]]:
    """Every policy on every simulator and seed (``rounds`` per run: each simulator's own
    when None)."""

    def make(sim_name: str, seed: int) -> Simulation:
        build = SIMULATORS[sim_name]
        return build(seed) if rounds is None else build(seed, rounds=rounds)

    interval = settings.update_interval
    plans = [(p, s, sd, f) for s in sims for sd in range(seeds) for p in policies for f in features]
    cache = {(s, sd): make(s, sd) for s in sims for sd in range(seeds)}  # each built once
    total = sum(cache[s, sd].rounds for _p, s, sd, _f in plans) * (2 if delay else 1)
    results: list[RunResult] = []
    # Compile (or load from cache) the numba kernels outside the timed runs.
    warm_up()
    for name in policies:
        run_one(name, cache[sims[0], 0], 0, settings, interval, 0, rounds=2 * interval)
    with progress_bar(total=total, unit="ev", desc="convergence", smoothing=0.05) as bar:
        for name, sim_name, seed, feats in plans:
            sim = cache[sim_name, seed]
            bar.set_postfix_str(f"{name} on {sim_name} seed {seed} ({feats})")
            result = run_one(name, sim, seed, settings, interval, delay, bar, features=feats)
            if delay:
                prompt = run_one(name, sim, seed, settings, interval, 0, bar, features=feats)
                result.delay_cost = prompt.avg_reward - result.avg_reward
            results.append(result)
    peers = measure_peers({s: [cache[(s, sd)] for sd in range(seeds)] for s in sims}, delay)
    _write(results, peers, out, settings, delay)
    return results, peers


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.policy, r.simulator, r.features), []).append(r)
    out = []
    for (policy, sim, feats), rs in groups.items():
        out.append(
            {
                "policy": policy,
                "simulator": sim,
                "features": feats,
                "seeds": len(rs),
                "avg_reward": float(np.mean([r.avg_reward for r in rs])),
                "avg_reward_sd": float(np.std([r.avg_reward for r in rs])),
                "regret": float(np.mean([r.regret for r in rs])),
                "optimal_share": float(np.mean([r.optimal_share for r in rs])),
                "optimal_share_last20": float(np.mean([r.optimal_share_last20 for r in rs])),
                "decisions_per_s": float(np.mean([r.decisions_per_s for r in rs])),
            }
        )
        costs = [r.delay_cost for r in rs if r.delay_cost is not None]
        if costs:
            out[-1]["delay_cost"] = float(np.mean(costs))
        cold = [r.cold_reward for r in rs if r.cold_reward is not None]
        if cold:
            out[-1]["cold_reward"] = float(np.mean(cold))
    return out


def _write(
    results: list[RunResult], peers: dict[str, Any], out: Path, settings: Settings, delay: int
) -> None:
    summary = summarise(results)
    write_json(
        out,
        "convergence",
        {
            "rows": [r.row() for r in results],
            "summary": summary,
            "peers": peers,
            "update_interval": settings.update_interval,
            "feature_dim": settings.feature_dim,
            "delay": delay,
            "machine": machine(),
        },
    )
    table = markdown_table(
        [
            "policy",
            "simulator",
            "features",
            "avg reward",
            "regret",
            "optimal",
            "optimal last 20%",
            "decisions+updates/s",
            *(["delay cost"] if delay else []),
            "first 10 impressions",
        ],
        [
            [
                s["policy"],
                s["simulator"],
                s["features"],
                f"{s['avg_reward']:.3f} ± {s['avg_reward_sd']:.3f}",
                f"{s['regret']:.0f}",
                f"{s['optimal_share']:.3f}",
                f"{s['optimal_share_last20']:.3f}",
                f"{s['decisions_per_s']:,.0f}",
                *([f"{s['delay_cost']:.3f}"] if "delay_cost" in s else []),
                f"{s['cold_reward']:.3f}" if "cold_reward" in s else "",
            ]
            for s in summary
        ],
    )
    text = (
        f"# Convergence\n\nupdate interval {settings.update_interval}, feature dimension "
        f"{settings.feature_dim} (product path), reward delay {delay} events, mean over seeds."
        + (" Delay cost: average reward without the delay minus with it." if delay else "")
        + f"\n\n{table}\n"
    )
    for label, by_sim in peers.items():
        text += f"\n## {label}\n\n" + markdown_table(
            ["simulator", "avg reward", "decisions+updates/s"],
            [
                [k, f"{v['avg_reward']:.3f}", f"{v['decisions_per_s']:,.0f}"]
                for k, v in by_sim.items()
            ],
        )
        text += "\n"
    write_markdown(out, "convergence", text)
    caption = (
        f"Cumulative regret, lower is better (update interval {settings.update_interval}, "
        f"feature dimension {settings.feature_dim}"
        + (f", rewards {delay} events late" if delay else "")
        + "; dotted: raw features)"
    )
    fig = figure(results, caption)
    fig.savefig(out / "convergence.png", dpi=100)
    pyplot().close(fig)


def figure(results: list[RunResult], caption: str) -> Any:
    """One panel per simulator: each policy's mean cumulative regret over the rounds."""
    plt = pyplot()
    sims = sorted({r.simulator for r in results})
    fig, axes = plt.subplots(1, len(sims), figsize=(5 * len(sims), 4.4), squeeze=False)
    for ax, sim in zip(axes[0], sims, strict=True):
        on_sim = [r for r in results if r.simulator == sim]
        for policy, feats in sorted({(r.policy, r.features) for r in on_sim}):
            runs = [r for r in on_sim if (r.policy, r.features) == (policy, feats)]
            n = min(len(r.regret_curve) for r in runs)
            mean = np.mean([r.regret_curve[:n] for r in runs], axis=0)
            label = policy if feats == "product" else f"{policy} ({feats})"
            x = np.arange(n) * runs[0].curve_every
            ax.plot(x, mean, label=label, ls="-" if feats == "product" else ":")
        seeds = len({r.seed for r in on_sim})
        ax.set_title(
            f"{sim}: {on_sim[0].actions} actions, {on_sim[0].rounds:,} rounds, "
            f"{seeds} seed{'s' if seeds > 1 else ''}",
            fontsize=10,
        )
        ax.set_xlim(0, on_sim[0].rounds)
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative regret (mean over seeds)")
        ax.legend(fontsize=8)
    fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    return fig


def print_table(results: list[RunResult], peers: dict[str, Any] | None = None) -> str:
    summary = summarise(results)
    lines = [
        f"{'policy':<16}{'simulator':<12}{'features':<9}{'avg_reward':>11}{'regret':>9}"
        f"{'optimal':>9}{'last20':>8}{'dec+upd/s':>11}"
        + (f"{'delay_cost':>12}" if any("delay_cost" in s for s in summary) else "")
        + (f"{'cold':>7}" if any("cold_reward" in s for s in summary) else "")
    ]
    for s in summary:
        lines.append(
            f"{s['policy']:<16}{s['simulator']:<12}{s['features']:<9}{s['avg_reward']:>11.3f}"
            f"{s['regret']:>9.0f}{s['optimal_share']:>9.3f}"
            f"{s['optimal_share_last20']:>8.3f}{s['decisions_per_s']:>11,.0f}"
            + (f"{s['delay_cost']:>12.3f}" if "delay_cost" in s else "")
            + (f"{s['cold_reward']:>7.3f}" if "cold_reward" in s else "")
        )
    for label, sim, v in ((k, sim, v) for k, d in (peers or {}).items() for sim, v in d.items()):
        lines.append(f"{label} on {sim}: {v['avg_reward']:.3f} at {v['decisions_per_s']:,.0f}/s")
        for s in summary:
            if s["simulator"] == sim:
                lines.append(
                    f"  {s['policy']:<16}{s['features']:<9} "
                    f"reward x{s['avg_reward'] / v['avg_reward']:.3f}"
                    f"  speed x{s['decisions_per_s'] / v['decisions_per_s']:.1f}"
                )
    return "\n".join(lines)

"""Peer libraries on the convergence bench's simulators, if the `peers` extra is installed:
Vowpal Wabbit's `--cb_explore_adf --squarecb -q sa` and River's disjoint LinUCB. Each sees
the same contexts (named fields; strings as categories) and candidate sets as the
product's path, and learns each reward once ``delay`` more events were decided."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from stream.bench.simulators import Simulation

Run = Callable[[Simulation, int, int], "tuple[float, float] | None"]


def _vw_features(values: dict[str, float | str]) -> str:
    return " ".join(f"{k}={v}" if isinstance(v, str) else f"{k}:{v:.6g}" for k, v in values.items())


def vw_run(sim: Simulation, seed: int, delay: int) -> tuple[float, float] | None:
    """Average reward and decisions+updates/s of VW's SquareCB over ``sim``."""
    try:
        import vowpalwabbit
    except ImportError:
        return None
    vw = vowpalwabbit.Workspace(f"--cb_explore_adf --squarecb -q sa --quiet --random_seed {seed}")
    rng = np.random.default_rng(seed + 1000)
    T, total = sim.rounds, 0.0
    queue: deque[tuple[int, list[str]]] = deque()
    start = time.perf_counter()
    for t in range(T):
        feats = _vw_features(sim.context(t))
        cands = sim.candidates(t)
        described = sim.candidate_features(t) or {}
        lines = [f"shared |s {feats}"] + [
            f"|a a={sim.actions[a]} {_vw_features(described.get(sim.actions[a], {}))}"
            for a in cands
        ]
        pmf = np.asarray(vw.predict(lines), dtype=np.float64)
        pmf /= pmf.sum()
        i = int(rng.choice(len(pmf), p=pmf))
        r = float(sim.draw(np.array([t]), np.array([cands[i]]), rng)[0])
        total += r
        lines[i + 1] = f"0:{-r}:{pmf[i]} " + lines[i + 1]
        queue.append((t, lines))
        while queue and queue[0][0] + delay <= t:
            vw.learn(queue.popleft()[1])
    vw.finish()
    return total / T, T / (time.perf_counter() - start)


def river_run(sim: Simulation, seed: int, delay: int) -> tuple[float, float] | None:
    """Average reward and decisions+updates/s of River's ``LinUCBDisjoint`` over ``sim``."""
    try:
        from river import bandit
    except ImportError:
        return None
    policy = bandit.LinUCBDisjoint(alpha=1.0, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    T, total = sim.rounds, 0.0
    queue: deque[tuple[int, str, dict[str, float], float]] = deque()
    start = time.perf_counter()
    for t in range(T):
        ctx = {"bias": 1.0}
        for k, v in sim.context(t).items():
            ctx[f"{k}={v}" if isinstance(v, str) else k] = 1.0 if isinstance(v, str) else v
        cands = sim.candidates(t)
        arms = [sim.actions[a] for a in cands]
        arm = str(policy.pull(arms, context=ctx))  # one of arms
        r = float(sim.draw(np.array([t]), np.array([cands[arms.index(arm)]]), rng)[0])
        total += r
        queue.append((t, arm, ctx, r))
        while queue and queue[0][0] + delay <= t:
            _, a, c, y = queue.popleft()
            policy.update(a, c, y)
    return total / T, T / (time.perf_counter() - start)


PEERS: dict[str, Run] = {
    "Vowpal Wabbit (--cb_explore_adf --squarecb -q sa)": vw_run,
    "River LinUCBDisjoint (alpha 1)": river_run,
}


def measure_peers(sims: dict[str, list[Simulation]], delay: int) -> dict[str, Any]:
    """Per installed peer, per simulator: the mean over its seeds' runs."""
    out: dict[str, Any] = {}
    for label, run in PEERS.items():
        by_sim = {}
        for name, runs_of in sims.items():
            runs = [run(sim, seed, delay) for seed, sim in enumerate(runs_of)]
            got = [r for r in runs if r is not None]
            if got and len(got) == len(runs):
                by_sim[name] = {
                    "avg_reward": float(np.mean([r[0] for r in got])),
                    "decisions_per_s": float(np.mean([r[1] for r in got])),
                }
        if by_sim:
            out[label] = by_sim
    return out

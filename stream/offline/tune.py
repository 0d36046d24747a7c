"""`bandit-stream tune`: optuna over the product's search spaces for a policy.

The objective is always computed from data: on a joined log (``--log``), the doubly
robust value estimate on the held-out last ``holdout`` share of the log after the policy
learned the rest off-policy; on a simulator (``--sim``), the average reward the policy
earns online over the simulator's seeds (the convergence benchmark's harness). The study
is stored (SQLite) so it can be resumed and inspected; the best settings are printed as
ready-to-paste ``RL_*`` lines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stream.config import Settings, env_name


def _spaces() -> dict[str, dict[str, tuple[str, float, float]]]:
    """Search space per policy, as each declares its knobs: setting -> (kind, low, high)."""
    from policies.registry import POLICIES

    out = {
        name: {k.setting: k.tune for k in cls.knobs if k.tune is not None}
        for name, cls in POLICIES.items()
    }
    return {name: space for name, space in out.items() if space}


SPACES = _spaces()


def _suggest(trial: Any, policy: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, (kind, low, high) in SPACES[policy].items():
        if kind == "int":
            values[name] = trial.suggest_int(name, int(low), int(high))
        else:
            values[name] = trial.suggest_float(name, low, high, log=kind == "log")
    return values


def log_objective(
    records: list[dict[str, Any]], policy: str, base: Settings, holdout: float
) -> Callable[[Any], float]:
    from stream.core.policy_config import policy_params
    from stream.offline.replay import Replayer

    cut = int(len(records) * (1.0 - holdout))
    head, tail = records[:cut], records[cut:]
    if not head or not tail:
        raise ValueError("the joined log is too short to hold out a tail")

    def objective(trial: Any) -> float:
        settings = base.model_copy(update=_suggest(trial, policy))
        rep = Replayer([policy], settings, {policy: policy_params(policy, settings)})
        rep.run(head, learn=True)
        rep.estimates[policy] = type(rep.estimates[policy])()  # score the tail only
        rep.run(tail, learn=False)
        value = rep.estimates[policy].result()["dr"].value
        return float(value) if np.isfinite(value) else float("-inf")

    return objective


def sim_objective(sim: str, policy: str, base: Settings, seeds: int) -> Callable[[Any], float]:
    from stream.bench import convergence
    from stream.bench.simulators import SIMULATORS

    sims = [SIMULATORS[sim](seed) for seed in range(seeds)]

    def objective(trial: Any) -> float:
        settings = base.model_copy(update=_suggest(trial, policy))
        rewards = [
            convergence.run_one(policy, s, seed, settings, settings.update_interval, 0).avg_reward
            for seed, s in enumerate(sims)
        ]
        return float(np.mean(rewards))

    return objective


def tune(
    objective: Callable[[Any], float], policy: str, trials: int, out: Path, seed: int = 0
) -> dict[str, Any]:
    import optuna

    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(out / 'tune.db').resolve()}"
    study = optuna.create_study(
        study_name=f"bandit-stream-{policy}",
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    study.optimize(objective, n_trials=trials, show_progress_bar=True)
    best = dict(study.best_params)
    return {
        "policy": policy,
        "trials": len(study.trials),
        "best_value": study.best_value,
        "best": best,
        "env": [f"{env_name(k)}={v}" for k, v in best.items()],
        "storage": storage,
    }

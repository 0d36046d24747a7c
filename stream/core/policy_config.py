"""Policies as the settings configure them: constructor arguments and seeds.

The service, replay, tuning and the convergence bench build policies here alone, so a
policy named in a setting behaves the same in each of them.
"""

from __future__ import annotations

from typing import Any

from mmh3 import hash as murmur3

from policies import Policy, create_policy
from stream.config import Settings

# The direct-method reward model of doubly robust estimates: a per-action ridge regression.
REWARD_MODEL_POLICY = "epsilon_greedy"


def policy_params(name: str, settings: Settings) -> dict[str, Any]:
    """The settings knobs that configure policy ``name`` (constructor keyword arguments):
    its own, and the shared reward model's, which every policy takes."""
    own = _own_params(name, settings)
    if own is None:
        return {}
    return {**own, "shared": settings.shared_model, "shared_dim": settings.shared_dim}


def _own_params(name: str, settings: Settings) -> dict[str, Any] | None:
    if name == "epsilon_greedy":
        return {"epsilon": settings.epsilon}
    if name == "linucb":
        return {"alpha": settings.linucb_alpha, "floor": settings.exploration_floor}
    if name == "doubly_robust":
        return {
            "alpha": settings.dr_alpha,
            "learning_rate": settings.dr_learning_rate,
            "lr_decay": settings.dr_lr_decay,
            "max_weight": settings.dr_max_weight,
            "max_history": settings.dr_max_history,
            "floor": settings.exploration_floor,
            "forgetting": settings.dr_forgetting,
        }
    if name == "offset_tree":
        return {
            "max_depth": settings.ot_max_depth,
            "min_split": settings.ot_min_split,
            "split_threshold": settings.ot_split_threshold,
            "max_nodes": settings.ot_max_nodes,
            "node_model": settings.ot_node_model,
            "floor": settings.exploration_floor,
            "baseline": settings.ot_baseline,
            "alpha": settings.ot_alpha,
        }
    if name == "squarecb":
        return {
            "gamma_scale": settings.squarecb_gamma_scale,
            "gamma_exponent": settings.squarecb_gamma_exponent,
            "floor": settings.exploration_floor,
        }
    if name == "linear_ts":
        return {"v": settings.ts_scale, "floor": settings.exploration_floor}
    return None


def policy_seed(domain: str, name: str, settings: Settings) -> int:
    """A distinct, stable exploration stream per (domain, policy), never Python's hash();
    the baseline keeps the per-domain seed it always had, so restored domains continue."""
    key = domain if name == settings.baseline_policy else f"{domain}/{name}"
    return murmur3(key, settings.seed & 0x7FFFFFFF, False)


def build_policy(
    name: str,
    domain: str,
    settings: Settings,
    n_features: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> Policy:
    """Policy ``name`` for ``domain`` as the settings configure it (``overrides`` win)."""
    kw = {**policy_params(name, settings), **(overrides or {})}
    dim = settings.feature_dim if n_features is None else n_features
    return create_policy(name, dim, policy_seed(domain, name, settings), **kw)


def rollout_unit(domain: str, unit: str, seed: int) -> float:
    """A stable position in [0, 1) of (domain, unit): the same on every instance and run."""
    return murmur3(f"{domain}\x00{unit}", seed & 0x7FFFFFFF, False) / 2**32

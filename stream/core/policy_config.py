"""Policies as the settings configure them: constructor arguments and seeds.

The service, replay, tuning and the convergence bench build policies here alone, so a
policy named in a setting behaves the same in each of them.
"""

from __future__ import annotations

from typing import Any

from mmh3 import hash as murmur3

from policies import Policy, create_policy, policy_class
from stream.config import Settings

# The direct-method reward model of doubly robust estimates: a per-action ridge regression.
REWARD_MODEL_POLICY = "epsilon_greedy"


def policy_params(name: str, settings: Settings) -> dict[str, Any]:
    """The settings knobs that configure policy ``name`` (constructor keyword arguments),
    as the policy declares them (policies/knobs.py)."""
    return {k.param: getattr(settings, k.setting) for k in policy_class(name).knobs}


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

"""Policy name -> class; used by the settings, the stream and the generic policy checks."""

from __future__ import annotations

from typing import Any

from policies.base import Policy, PolicyError
from policies.doubly_robust import DoublyRobust
from policies.epsilon_greedy import EpsilonGreedy
from policies.linear_ts import LinearTS
from policies.linucb import LinUCB
from policies.offset_tree import OffsetTree
from policies.squarecb import SquareCB

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (EpsilonGreedy, LinUCB, LinearTS, DoublyRobust, OffsetTree, SquareCB)
}


def policy_class(name: str) -> type[Policy]:
    try:
        return POLICIES[name]
    except KeyError:
        raise PolicyError(
            f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}"
        ) from None


def create_policy(name: str, n_features: int, seed: int, **params: Any) -> Policy:
    """Instantiate ``name`` with the given hyperparameters (unknown keys are an error)."""
    cls = policy_class(name)
    try:
        return cls(n_features=n_features, seed=seed, **params)
    except TypeError as exc:
        raise PolicyError(f"bad parameters for policy {name!r}: {exc}") from exc

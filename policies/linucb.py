"""Disjoint LinUCB with a probability floor."""

from __future__ import annotations

from typing import Any

from policies.base import (
    ContextBatch,
    FloatArray,
    PolicyError,
    check_floor,
    greedy_with_floor,
)
from policies.knobs import FLOOR, SHARED, Knob
from policies.ridge import RidgePolicy


class LinUCB(RidgePolicy):
    """Disjoint LinUCB (Li, Chu, Langford & Schapire, WWW 2010, Algorithm 1).

    Each action keeps a ridge regression ``theta_a = A_a^{-1} b_a`` (rank-1
    Sherman–Morrison updates) and scores ``theta_a . x + alpha * sqrt(x^T A_a^{-1} x)``.
    The deterministic UCB choice becomes a distribution: the best-scoring candidates share
    ``1 - floor`` and every candidate gets ``floor / K``, so each decision carries a true
    propensity for off-policy learning and evaluation.

    Parameters
    ----------
    n_features
        Feature dimension.
    alpha
        Width of the upper confidence bound (exploration strength).
    l2
        Ridge penalty.
    floor
        Probability mass spread uniformly over the candidates.
    seed
        Exploration seed, combined with each event id.

    Examples
    --------
    >>> import numpy as np
    >>> from policies.base import ContextBatch, Feedback
    >>> p = LinUCB(n_features=2, alpha=0.5, floor=0.02, seed=1)
    >>> batch = ContextBatch(np.ones((2, 2)), ["a", "b"], np.array([0, 2]), ["e1"])
    >>> p.learn(Feedback(batch, np.array([0]), np.array([0.0]), np.array([0.5])))
    >>> p.choose(batch).pmf.round(3).tolist()  # "b" is unexplored: its bound is higher
    [0.01, 0.99]
    """

    name = "linucb"
    knobs = (
        Knob("alpha", "linucb_alpha", float, 0.5, "exploration of linucb (UCB width)", ge=0.0),
        FLOOR,
        *SHARED,
    )

    def __init__(
        self,
        n_features: int,
        alpha: float = 0.5,
        l2: float = 1.0,
        floor: float = 0.01,
        seed: int = 0,
        forgetting: float = 1.0,
        shared: str = "false",
        shared_dim: int = 256,
    ) -> None:
        super().__init__(n_features, l2, seed, forgetting, shared, shared_dim)
        if alpha < 0:
            raise PolicyError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.floor = check_floor(floor)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha, "floor": self.floor}

    def _distribution(self, batch: ContextBatch) -> FloatArray:
        idx, X = self._rows(batch)
        ucb = self._arms.predict(idx, X) + self.alpha * self._arms.widths(
            idx, X, batch.uniform_layout()
        )
        return greedy_with_floor(ucb, batch, self.floor)

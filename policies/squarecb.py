"""SquareCB: inverse-gap weighting over per-action online ridge regression."""

from __future__ import annotations

from typing import Any

import numpy as np

from policies.base import ContextBatch, FloatArray, PolicyError, check_floor, mix_floor
from policies.kernels import inverse_gap
from policies.knobs import FLOOR, SHARED, Knob
from policies.ridge import RidgePolicy


class SquareCB(RidgePolicy):
    """SquareCB (Foster & Rakhlin, ICML 2020, "Beyond UCB: Optimal and Efficient
    Contextual Bandits with Regression Oracles"; Vowpal Wabbit's ``--squarecb``).

    A regression oracle predicts each candidate's reward ``r_hat(x, a)`` (here one ridge
    regression per action, learned online as epsilon-greedy's); with ``b`` the best
    prediction among the event's K candidates, every other candidate is sampled with
    probability ``1 / (K + gamma * (r_hat_b - r_hat_a))`` and the best share the rest.
    Exploration falls off with the gap, not uniformly: a candidate predicted nearly as good
    is tried often, a clearly worse one rarely. ``gamma = gamma_scale * t ** gamma_exponent``
    grows with ``t``, the events learned so far (Vowpal Wabbit's defaults: 10 and 1/2).
    As every policy of the product, it mixes in a ``floor`` spread evenly over the
    candidates, so no candidate's probability (and importance weight) runs away as gamma
    grows.

    Parameters
    ----------
    n_features
        Feature dimension.
    gamma_scale, gamma_exponent
        The learning-rate schedule of the inverse-gap weighting.
    l2
        Ridge penalty of the reward models.
    forgetting
        Weight of the past at each update of an action's model (1.0 = off).
    floor
        Probability mass spread uniformly over the candidates.
    seed
        Exploration seed, combined with each event id.

    Examples
    --------
    >>> import numpy as np
    >>> from policies.base import ContextBatch, Feedback
    >>> p = SquareCB(n_features=1, gamma_scale=10.0, seed=0)
    >>> batch = ContextBatch(np.ones((2, 1)), ["a", "b"], np.array([0, 2]), ["e1"])
    >>> for _ in range(20):
    ...     p.learn(Feedback(batch, np.array([1]), np.array([1.0]), np.array([0.5])))
    >>> p.choose(batch).pmf.round(3).tolist()  # gap ~0.95, gamma = 10 * 21 ** 0.5
    [0.027, 0.973]
    """

    name = "squarecb"
    # fmt: off
    knobs = (
        Knob("gamma_scale", "squarecb_gamma_scale", float, 10.0, "gamma = scale * t ** exponent",
             gt=0.0, tune=("log", 1.0, 1000.0)),
        Knob("gamma_exponent", "squarecb_gamma_exponent", float, 0.5, "gamma's exponent",
             ge=0.0, le=1.0, tune=("float", 0.25, 0.75)),
        FLOOR,
        *SHARED,
    )
    # fmt: on

    def __init__(
        self,
        n_features: int,
        gamma_scale: float = 10.0,
        gamma_exponent: float = 0.5,
        l2: float = 1.0,
        seed: int = 0,
        forgetting: float = 1.0,
        floor: float = 0.01,
        shared: str = "false",
        shared_dim: int = 256,
    ) -> None:
        super().__init__(n_features, l2, seed, forgetting, shared, shared_dim)
        self.floor = check_floor(floor)
        if gamma_scale <= 0 or not 0 <= gamma_exponent <= 1:
            raise PolicyError("squarecb needs gamma_scale > 0 and gamma_exponent in [0, 1]")
        self.gamma_scale = float(gamma_scale)
        self.gamma_exponent = float(gamma_exponent)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "gamma_scale": self.gamma_scale,
            "gamma_exponent": self.gamma_exponent,
            "floor": self.floor,
        }

    @property
    def gamma(self) -> float:
        return self.gamma_scale * float(1 + self.n_learned) ** self.gamma_exponent

    def _distribution(self, batch: ContextBatch) -> FloatArray:
        idx, X = self._rows(batch)
        scores = np.ascontiguousarray(self._arms.predict(idx, X), dtype=np.float64)
        return mix_floor(inverse_gap(scores, batch.offsets, self.gamma), batch, self.floor)

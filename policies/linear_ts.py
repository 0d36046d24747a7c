"""Linear Thompson sampling with an exact, Monte-Carlo-defined propensity."""

from __future__ import annotations

from typing import Any

import numpy as np
from mmh3 import hash as murmur3

from policies.base import (
    ContextBatch,
    FloatArray,
    IntArray,
    PolicyError,
    check_floor,
    mix_floor,
)
from policies.kernels import ts_win_shares
from policies.knobs import FLOOR, SHARED, Knob
from policies.ridge import RidgePolicy

# One table of standard normals shared by every instance (memory stays flat with many
# domains); an event's draws start at an offset hashed from its id and the policy seed.
_TABLE = np.random.default_rng(20130617).standard_normal(1 << 16)


class LinearTS(RidgePolicy):
    """Linear Thompson sampling (Agrawal & Goyal, ICML 2013) over disjoint ridge arms.

    The posterior of arm ``a`` is ``N(theta_a, v^2 A_a^{-1})``; a draw is
    ``theta_a + v L_a^{-T} z`` with ``A_a = L_a L_a^T`` (Cholesky). Arms are independent, so
    for a candidate row ``x`` that draw's score ``x . theta~`` is exactly
    ``N(x . theta_a, v^2 x^T A_a^{-1} x)``; the policy samples these scalar scores directly
    (the same distribution, without a d x d product per draw).

    Thompson sampling's own choice probabilities have no closed form, so the *served*
    distribution is defined by ``n_draws`` posterior draws per event: each candidate's
    probability is its share of argmax wins, mixed with the floor, and the action is then
    sampled from that distribution. The logged probability is therefore exact for what is
    served. Draws come from a fixed normal table at an offset hashed from the event id, so
    the same state and event give the same distribution.

    Parameters
    ----------
    n_features
        Feature dimension.
    v
        Posterior scale (exploration strength).
    l2
        Ridge penalty (prior precision).
    floor
        Probability mass spread uniformly over the candidates.
    n_draws
        Posterior draws per event defining the distribution.
    seed
        Exploration seed, combined with each event id.

    Examples
    --------
    >>> import numpy as np
    >>> from policies.base import ContextBatch
    >>> p = LinearTS(n_features=2, v=0.5, seed=3)
    >>> batch = ContextBatch(np.ones((3, 2)), ["a", "b", "c"], np.array([0, 3]), ["e1"])
    >>> d = p.choose(batch)
    >>> bool(np.isclose(d.pmf.sum(), 1.0)), bool(d.probability[0] == d.pmf[d.row[0]])
    (True, True)
    """

    name = "linear_ts"
    knobs = (
        Knob("v", "ts_scale", float, 0.2, "exploration of linear_ts (posterior scale)", ge=0.0),
        FLOOR,
        *SHARED,
    )

    def __init__(
        self,
        n_features: int,
        v: float = 0.2,
        l2: float = 1.0,
        floor: float = 0.01,
        n_draws: int = 32,
        seed: int = 0,
        forgetting: float = 1.0,
        shared: str = "false",
        shared_dim: int = 256,
    ) -> None:
        super().__init__(n_features, l2, seed, forgetting, shared, shared_dim)
        if v < 0:
            raise PolicyError(f"v must be >= 0, got {v}")
        if n_draws < 1:
            raise PolicyError(f"n_draws must be >= 1, got {n_draws}")
        self.v = float(v)
        self.floor = check_floor(floor)
        self.n_draws = int(n_draws)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "v": self.v,
            "floor": self.floor,
            "n_draws": self.n_draws,
        }

    def _starts(self, batch: ContextBatch) -> IntArray:
        """Each event's offset into the normal table, hashed from its id and the seed."""
        s = (self.seed + 0x5EED) & 0x7FFFFFFF
        return np.fromiter((murmur3(k, s, False) for k in batch.keys), np.int64, batch.n_events)

    def _distribution(self, batch: ContextBatch) -> FloatArray:
        idx, X = self._rows(batch)
        mean = self._arms.predict(idx, X)
        width = self._arms.widths(idx, X, batch.uniform_layout())
        share = ts_win_shares(
            mean, width, self.v, batch.offsets, self._starts(batch), self.n_draws, _TABLE
        )
        return mix_floor(share, batch, self.floor)

"""Epsilon-greedy over per-action online ridge regression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.base import (
    ContextBatch,
    Decisions,
    FloatArray,
    Policy,
    PolicyError,
    greedy_with_floor,
    sample_rows,
    seeded_uniforms,
)
from policies.kernels import greedy_floor
from policies.knobs import SHARED, Knob
from policies.ridge import RidgePolicy


class EpsilonGreedy(RidgePolicy):
    """Epsilon-greedy exploration over disjoint ridge-regression reward models.

    Each action's expected reward is a ridge regression ``theta_a . x`` learned online
    with rank-1 (Sherman–Morrison) updates. Each event puts ``1 - epsilon`` of its
    probability on the best-scoring candidates (split evenly among exact ties, so the
    logged probability stays exact) and ``epsilon`` uniformly over all its candidates
    (Sutton & Barto, *Reinforcement Learning*, 2nd ed., section 2.2; the contextual form
    is the baseline of Li et al., WWW 2010).

    Parameters
    ----------
    n_features
        Feature dimension.
    epsilon
        Share of probability spread uniformly over the candidates (exploration).
    l2
        Ridge penalty ``lambda`` in ``A = lambda I + X^T X``.
    seed
        Exploration seed, combined with each event id.

    Examples
    --------
    >>> import numpy as np
    >>> from policies.base import ContextBatch, Feedback
    >>> p = EpsilonGreedy(n_features=2, epsilon=0.1, seed=7)
    >>> X = np.array([[1.0, 0.0], [1.0, 0.0]])
    >>> batch = ContextBatch(X, ["a", "b"], np.array([0, 2]), ["event-1"])
    >>> for _ in range(20):
    ...     p.learn(Feedback(batch, np.array([1]), np.array([1.0]), np.array([0.5])))
    >>> d = p.choose(batch)
    >>> [batch.actions[r] for r in d.row], d.pmf.round(3).tolist()
    (['b'], [0.05, 0.95])
    """

    name = "epsilon_greedy"
    knobs = (
        Knob("epsilon", "epsilon", float, 0.05, "exploration of epsilon_greedy", ge=0.0, le=1.0),
        *SHARED,
    )

    def __init__(
        self,
        n_features: int,
        epsilon: float = 0.05,
        l2: float = 1.0,
        seed: int = 0,
        forgetting: float = 1.0,
        shared: str = "false",
        shared_dim: int = 256,
    ) -> None:
        super().__init__(n_features, l2, seed, forgetting, shared, shared_dim)
        if not 0.0 <= epsilon <= 1.0:
            raise PolicyError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "epsilon": self.epsilon}

    def _distribution(self, batch: ContextBatch) -> FloatArray:
        idx, X = self._rows(batch)
        return greedy_with_floor(self._arms.predict(idx, X), batch, self.epsilon)

    @classmethod
    def choose_many(
        cls, policies: Sequence[Policy], batch: ContextBatch, starts: Sequence[int]
    ) -> list[Decisions]:
        """Every policy's rows scored, distributed and sampled in one pass: each row's
        arithmetic is its own policy's ``choose``, so are the decisions."""
        group = [p for p in policies if isinstance(p, EpsilonGreedy)]
        if len(group) != len(policies) or len({p.epsilon for p in group}) != 1:
            return super().choose_many(policies, batch, starts)
        if any(p._inputs.on is not False for p in group):  # shared rows: each its own
            return super().choose_many(policies, batch, starts)
        group[0]._check_batch(batch)
        if any(p.n_features != group[0].n_features for p in group):
            return super().choose_many(policies, batch, starts)
        offsets, actions, keys = batch.offsets, batch.actions, batch.keys
        rows = offsets.take(starts).tolist()  # each policy's first row
        theta = np.concatenate(
            [p._arms.rows_of(actions[rows[i] : rows[i + 1]]) for i, p in enumerate(group)]
        )
        counts = np.diff(starts)
        seeds = (p.seed for p, n in zip(group, counts.tolist(), strict=True) for _ in range(n))
        u = seeded_uniforms(keys, seeds)
        scores = np.einsum("pd,pd->p", theta, batch.X)
        pmf = greedy_floor(scores, offsets, group[0].epsilon)
        picked = sample_rows(pmf, offsets, u)
        local = picked - np.repeat(rows[:-1], counts)  # rows within each policy's own batch
        prob = pmf[picked]
        return [
            Decisions(local[s0:s1], prob[s0:s1], pmf[r0:r1])
            for s0, s1, r0, r1 in zip(starts, starts[1:], rows, rows[1:], strict=False)
        ]

    @property
    def action_counts(self) -> dict[str, int]:
        """Updates learned per action."""
        return {a: int(self._arms.counts[i]) for a, i in self._arms.index.items()}

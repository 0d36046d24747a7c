"""Off-policy value estimators with 95% confidence intervals, batch and streaming.

For logged events ``(x, a, r, p)`` (``p`` the probability the logging policy gave ``a``)
and a target policy ``pi``, with importance weight ``w = pi(a|x) / p``:

- IPS (Horvitz & Thompson 1952): ``V = mean(w r)``; CI from the sample variance of ``w r``.
- Self-normalised IPS (Swaminathan & Joachims, NeurIPS 2015): ``V = sum(w r) / sum(w)``;
  CI by the delta method, ``var = mean(w^2 (r - V)^2) / mean(w)^2 / n``.
- Doubly robust (Dudik, Langford & Li, ICML 2011): with a reward model ``r_hat``,
  ``V = mean(sum_a' pi(a'|x) r_hat(x, a') + w (r - r_hat(x, a)))``; CI from its variance.

Intervals are normal approximations, ``V +- 1.96 * se``. :class:`OnlineEstimate` keeps the
running sums (constant memory) so a service can score every joined reward as it comes.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> n = 20000
>>> p = np.full(n, 0.5); a = rng.integers(0, 2, n)          # uniform logging over 2 arms
>>> r = (rng.random(n) < np.where(a == 1, 0.8, 0.3)).astype(float)
>>> pi_a = (a == 1).astype(float)                          # target: always arm 1 (value 0.8)
>>> est = estimate(pi_a, p, r)
>>> round(est["ips"].value, 2), est["ips"].low < 0.8 < est["ips"].high
(0.81, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.base import Feedback, Policy

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def _interval(value: float, var: float, n: int) -> Estimate:
    if n == 0 or not math.isfinite(value):
        return Estimate(float("nan"), float("nan"), float("nan"), n)
    se = math.sqrt(max(var, 0.0) / n) if n > 1 else float("inf")
    return Estimate(value, value - Z95 * se, value + Z95 * se, n)


def estimate(
    pi_a: NDArray[np.float64],
    p: NDArray[np.float64],
    r: NDArray[np.float64],
    dm: NDArray[np.float64] | None = None,
    r_hat_a: NDArray[np.float64] | None = None,
) -> dict[str, Estimate]:
    """IPS, SNIPS and (given ``dm`` = sum_a' pi r_hat and ``r_hat_a``) DR estimates."""
    acc = OnlineEstimate()
    acc.update(pi_a, p, r, dm, r_hat_a)
    return acc.result()


class OnlineEstimate:
    """Running sums for IPS, SNIPS and DR; ``update`` per batch, ``result`` any time."""

    __slots__ = ("n", "s_wr", "s_wr2", "s_w", "s_w2", "s_w2r", "s_w2r2", "n_dr", "s_dr", "s_dr2")

    def __init__(self) -> None:
        self.n = 0
        self.s_wr = self.s_wr2 = self.s_w = self.s_w2 = self.s_w2r = self.s_w2r2 = 0.0
        self.n_dr = 0
        self.s_dr = self.s_dr2 = 0.0

    def update(
        self,
        pi_a: NDArray[np.float64],
        p: NDArray[np.float64],
        r: NDArray[np.float64],
        dm: NDArray[np.float64] | None = None,
        r_hat_a: NDArray[np.float64] | None = None,
    ) -> None:
        w = np.asarray(pi_a, dtype=np.float64) / np.asarray(p, dtype=np.float64)
        r = np.asarray(r, dtype=np.float64)
        wr = w * r
        self.n += len(w)
        self.s_wr += float(wr.sum())
        self.s_wr2 += float((wr * wr).sum())
        self.s_w += float(w.sum())
        w2 = w * w
        self.s_w2 += float(w2.sum())
        self.s_w2r += float((w2 * r).sum())
        self.s_w2r2 += float((w2 * r * r).sum())
        if dm is not None and r_hat_a is not None:
            t = np.asarray(dm, dtype=np.float64) + w * (r - np.asarray(r_hat_a, dtype=np.float64))
            self.n_dr += len(t)
            self.s_dr += float(t.sum())
            self.s_dr2 += float((t * t).sum())

    def score(
        self, policy: Policy, logged: Feedback, r_hat: NDArray[np.float64] | None = None
    ) -> None:
        """Score ``policy``'s distribution against ``logged`` decisions, before it learns
        them; ``r_hat`` (a reward model's prediction per candidate row) adds DR."""
        pmf = policy.distribution(logged.batch)
        pi_a = pmf[logged.row]
        if r_hat is None:
            self.update(pi_a, logged.probability, logged.reward)
            return
        dm = np.add.reduceat(pmf * r_hat, logged.batch.offsets[:-1])  # sum_a' pi r_hat
        self.update(pi_a, logged.probability, logged.reward, dm, r_hat[logged.row])

    def result(self) -> dict[str, Estimate]:
        n = self.n
        out: dict[str, Estimate] = {}
        if n == 0:
            nan = Estimate(float("nan"), float("nan"), float("nan"), 0)
            return {"ips": nan, "snips": nan, "dr": nan}
        ips = self.s_wr / n
        out["ips"] = _interval(ips, self.s_wr2 / n - ips * ips, n)
        if self.s_w > 0:
            v = self.s_wr / self.s_w
            mean_w = self.s_w / n
            # sum w^2 (r - v)^2 expanded into the running sums
            num = (self.s_w2r2 - 2 * v * self.s_w2r + v * v * self.s_w2) / n
            out["snips"] = _interval(v, num / (mean_w * mean_w), n)
        else:
            out["snips"] = Estimate(float("nan"), float("nan"), float("nan"), n)
        if self.n_dr:
            dr = self.s_dr / self.n_dr
            out["dr"] = _interval(dr, self.s_dr2 / self.n_dr - dr * dr, self.n_dr)
        else:
            out["dr"] = Estimate(float("nan"), float("nan"), float("nan"), 0)
        return out

    def state(self) -> list[float]:
        return [
            self.n,
            self.s_wr,
            self.s_wr2,
            self.s_w,
            self.s_w2,
            self.s_w2r,
            self.s_w2r2,
            self.n_dr,
            self.s_dr,
            self.s_dr2,
        ]

    @classmethod
    def from_state(cls, values: list[float]) -> OnlineEstimate:
        if not isinstance(values, list) or len(values) != 10:
            raise ValueError("an estimator state is 10 numbers")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ValueError("an estimator state holds a non-number")
        e = cls()
        e.n, e.n_dr = int(values[0]), int(values[7])
        e.s_wr, e.s_wr2, e.s_w, e.s_w2, e.s_w2r, e.s_w2r2 = (float(v) for v in values[1:7])
        e.s_dr, e.s_dr2 = float(values[8]), float(values[9])
        return e

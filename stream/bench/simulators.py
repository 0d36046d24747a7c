"""Bandit simulators for the convergence benchmark: contexts, expected and drawn rewards.

Each simulator yields rounds in order; ``expected[t, a]`` is the mean reward of action
``a`` in round ``t`` (regret and optimal share are measured against it) and
``draw(t, a, rng)`` the reward actually observed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass
class Simulation:
    name: str
    actions: list[str]
    X: FloatArray  # [T, d] context features
    expected: FloatArray  # [T, K] mean reward per round and action
    noise_sd: float = 0.0  # Gaussian noise on the mean (seed); 0 -> Bernoulli draws

    @property
    def rounds(self) -> int:
        return int(self.X.shape[0])

    def draw(
        self, t: NDArray[np.int64], a: NDArray[np.int64], rng: np.random.Generator
    ) -> FloatArray:
        mean = self.expected[t, a]
        if self.noise_sd > 0:
            return mean + rng.normal(0.0, self.noise_sd, size=len(t))
        return (rng.random(len(t)) < mean).astype(np.float64)


def seed_sim(seed: int, rounds: int = 5_000) -> Simulation:
    """4 actions with fixed means, Gaussian noise sd 0.1, 5 irrelevant U(0,1) features."""
    rng = np.random.default_rng(seed)
    means = np.array([0.3, 0.8, 0.5, 0.4])
    X = rng.random((rounds, 5))
    return Simulation(
        "seed",
        ["option1", "option2", "option3", "option4"],
        X,
        np.tile(means, (rounds, 1)),
        noise_sd=0.1,
    )


def linear_sim(seed: int, rounds: int = 20_000, d: int = 10, k: int = 5) -> Simulation:
    """x ~ N(0, I) * 2 / sqrt(d); reward ~ Bernoulli(sigmoid(theta_a . x)), theta_a ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(k, d))
    X = rng.normal(size=(rounds, d)) * 2.0 / np.sqrt(d)
    expected = 1.0 / (1.0 + np.exp(-(X @ theta.T)))
    return Simulation("linear", [f"arm{i}" for i in range(k)], X, expected)


def digits_sim(seed: int, rounds: int = 20_000) -> Simulation:
    """scikit-learn's bundled digits as a 10-action bandit: reward 1 iff action == label."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    data = load_digits()
    X_all = data.data / 16.0  # pixels are 0..16: scale to [0, 1]
    y_all = data.target
    n = len(y_all)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-rounds // n))])[:rounds]
    expected = np.zeros((rounds, 10))
    expected[np.arange(rounds), y_all[order]] = 1.0
    return Simulation("digits", [f"digit{i}" for i in range(10)], X_all[order], expected)


SIMULATORS = {"seed": seed_sim, "linear": linear_sim, "digits": digits_sim}

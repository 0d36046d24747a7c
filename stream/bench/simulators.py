"""Bandit simulators for the convergence benchmark: contexts, expected and drawn rewards.

Each simulator yields rounds in order; ``expected[t, a]`` is the mean reward of action
``a`` in round ``t`` (regret and optimal share are measured against it) and
``draw(t, a, rng)`` the reward actually observed. Where candidates are items from a large
catalogue (``slate``), ``expected[t, j]`` is the mean reward of round ``t``'s ``j``-th
candidate instead; ``mean(t, a)`` reads either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass
class Simulation:
    name: str
    actions: list[str]
    X: FloatArray  # [T, d] context features (category codes where ``levels`` names them)
    expected: FloatArray  # [T, K] mean reward per round and action
    noise_sd: float = 0.0  # Gaussian noise on the mean (seed); 0 -> Bernoulli draws
    names: list[str] = field(default_factory=list)  # each column's key in a context dict
    # Per column, the strings its codes stand for (a categorical feature), or None.
    levels: list[list[str] | None] = field(default_factory=list)
    offered: NDArray[np.bool_] | None = None  # [T, K] the candidates of each round (None: all)
    slate: NDArray[np.int64] | None = None  # [T, k] each round's candidates, by action index
    item_features: FloatArray | None = None  # [K, f] each action's own numeric features
    item_names: list[str] = field(default_factory=list)  # their keys

    def __post_init__(self) -> None:
        d = self.X.shape[1]
        self.names = self.names or [f"x{j}" for j in range(d)]
        self.levels = self.levels or [None] * d

    @property
    def rounds(self) -> int:
        return int(self.X.shape[0])

    def candidates(self, t: int) -> NDArray[np.int64]:
        """The indices of round ``t``'s candidate actions, in order."""
        if self.slate is not None:
            return self.slate[t]
        if self.offered is None:
            return np.arange(len(self.actions))
        return np.flatnonzero(self.offered[t])

    def candidate_features(self, t: int) -> dict[str, dict[str, float | str]] | None:
        """Round ``t``'s ``candidate_features`` as an application would send them."""
        if self.item_features is None:
            return None
        return {
            self.actions[a]: dict(zip(self.item_names, self.item_features[a].tolist(), strict=True))
            for a in self.candidates(t).tolist()
        }

    def mean(self, t: NDArray[np.int64], a: NDArray[np.int64]) -> FloatArray:
        """The mean reward of action ``a[i]`` in round ``t[i]``."""
        if self.slate is None:
            return self.expected[t, a]
        return self.expected[t, np.argmax(self.slate[t] == a[:, None], axis=1)]

    def context(self, t: int) -> dict[str, float | str]:
        """Round ``t``'s context as an application would send it."""
        out: dict[str, float | str] = {}
        for name, lv, v in zip(self.names, self.levels, self.X[t].tolist(), strict=True):
            out[name] = lv[int(v)] if lv is not None else float(v)
        return out

    def raw(self, t0: int, t1: int) -> FloatArray:
        """Rounds ``t0:t1`` as a feature matrix: numeric columns as they are, categorical
        ones one-hot (what a user with a hand-built design matrix would pass)."""
        cols = []
        for j, lv in enumerate(self.levels):
            x = self.X[t0:t1, j]
            cols.append(x[:, None] if lv is None else np.eye(len(lv))[x.astype(np.int64)])
        return np.hstack(cols)

    def best(self) -> FloatArray:
        """Each round's best expected reward among its candidates."""
        if self.offered is None or self.slate is not None:
            return self.expected.max(axis=1)
        return np.where(self.offered, self.expected, -np.inf).max(axis=1)

    def draw(
        self, t: NDArray[np.int64], a: NDArray[np.int64], rng: np.random.Generator
    ) -> FloatArray:
        mean = self.mean(t, a)
        if self.noise_sd > 0:
            return mean + rng.normal(0.0, self.noise_sd, size=len(t))
        return (rng.random(len(t)) < mean).astype(np.float64)


def fixed_sim(seed: int, rounds: int = 5_000) -> Simulation:
    """4 actions with fixed means, Gaussian noise sd 0.1, 5 irrelevant U(0,1) features."""
    rng = np.random.default_rng(seed)
    means = np.array([0.3, 0.8, 0.5, 0.4])
    X = rng.random((rounds, 5))
    return Simulation(
        "fixed",
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


def _classification(
    name: str, X_all: FloatArray, y_all: NDArray[np.int64], names: list[str], seed: int, rounds: int
) -> Simulation:
    """A labelled data set as a bandit: one action per class, reward 1 iff it is the label;
    rows are drawn in a fresh random order per pass."""
    rng = np.random.default_rng(seed)
    n, k = len(y_all), int(y_all.max()) + 1
    order = np.concatenate([rng.permutation(n) for _ in range(-(-rounds // n))])[:rounds]
    expected = np.zeros((rounds, k))
    expected[np.arange(rounds), y_all[order]] = 1.0
    return Simulation(name, [f"class{i}" for i in range(k)], X_all[order], expected, names=names)


def digits_sim(seed: int, rounds: int = 20_000) -> Simulation:
    """scikit-learn's bundled digits (64 pixels named ``px<row><col>``), 10 actions."""
    from sklearn.datasets import load_digits

    data = load_digits()
    names = [f"px{j // 8}{j % 8}" for j in range(64)]
    return _classification("digits", data.data / 16.0, data.target, names, seed, rounds)


def _standardised(X: FloatArray) -> FloatArray:
    return (X - X.mean(axis=0)) / np.maximum(X.std(axis=0), 1e-12)


def wine_sim(seed: int, rounds: int = 20_000) -> Simulation:
    """scikit-learn's wine (13 named chemical measurements, standardised), 3 actions."""
    from sklearn.datasets import load_wine

    data = load_wine()
    X = _standardised(data.data)
    return _classification("wine", X, data.target, list(data.feature_names), seed, rounds)


def cancer_sim(seed: int, rounds: int = 20_000) -> Simulation:
    """scikit-learn's breast cancer (30 named measurements, standardised), 2 actions."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    return _classification("cancer", _standardised(data.data), data.target, names, seed, rounds)


def drift_sim(seed: int, rounds: int = 20_000, d: int = 10, k: int = 5) -> Simulation:
    """``linear``, but each action's weights move from one draw to another over the run
    (a quarter of the way per quarter), so what was best early stops being best."""
    rng = np.random.default_rng(seed)
    start, end = rng.normal(size=(k, d)), rng.normal(size=(k, d))
    X = rng.normal(size=(rounds, d)) * 2.0 / np.sqrt(d)
    w = np.floor(np.arange(rounds) / rounds * 4) / 3  # 0, 1/3, 2/3, 1 by quarter
    theta = (1 - w)[:, None, None] * start + w[:, None, None] * end  # [T, k, d]
    expected = 1.0 / (1.0 + np.exp(-np.einsum("td,tkd->tk", X, theta)))
    return Simulation("drift", [f"arm{i}" for i in range(k)], X, expected)


def changing_sim(seed: int, rounds: int = 20_000, d: int = 10, k: int = 12) -> Simulation:
    """``linear`` with 12 actions, of which each round offers a random 2 to 6."""
    rng = np.random.default_rng(seed)
    sim = linear_sim(seed, rounds, d, k)
    offered = np.zeros((rounds, k), dtype=bool)
    sizes = rng.integers(2, 7, size=rounds)
    for t in range(rounds):
        offered[t, rng.choice(k, size=sizes[t], replace=False)] = True
    return Simulation("changing", sim.actions, sim.X, sim.expected, offered=offered)


def categorical_sim(seed: int, rounds: int = 20_000, k: int = 4) -> Simulation:
    """Three string-valued context fields of 5, 4 and 3 levels; each action's click rate
    depends on every field's level (additive on the logit scale)."""
    rng = np.random.default_rng(seed)
    sizes = (5, 4, 3)
    fields = ["country", "device", "plan"]
    levels: list[list[str] | None] = [
        [f"{f}_{i}" for i in range(n)] for f, n in zip(fields, sizes, strict=True)
    ]
    X = np.stack([rng.integers(0, n, size=rounds) for n in sizes], axis=1).astype(np.float64)
    effects = [rng.normal(0, 1.2, size=(n, k)) for n in sizes]
    logit = sum(e[X[:, j].astype(np.int64)] for j, e in enumerate(effects))
    expected = 1.0 / (1.0 + np.exp(-np.asarray(logit)))
    actions = [f"offer{i}" for i in range(k)]
    return Simulation("categorical", actions, X, expected, names=fields, levels=levels)


def _interaction(X: FloatArray, W: FloatArray, items: FloatArray) -> FloatArray:
    """Click rates whose log-odds are the context-item interaction ``x^T W c``."""
    return 1.0 / (1.0 + np.exp(-np.einsum("td,df,tkf->tk", X, W, items)))


def items_sim(
    seed: int, rounds: int = 20_000, n_items: int = 2_000, k: int = 5, d: int = 5, f: int = 6
) -> Simulation:
    """2,000 items with 6 numeric features, 5 drawn at random per round (most of them never
    seen before early on); a click's log-odds are the interaction ``x^T W c`` of the
    context and the item's features, so what is learned about some items carries over."""
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n_items, f))
    W = rng.normal(size=(d, f)) * 2.0 / np.sqrt(f)
    X = rng.normal(size=(rounds, d)) / np.sqrt(d)
    slate = rng.integers(0, n_items, size=(rounds, k))
    while True:  # no item twice in one round
        s = np.sort(slate, axis=1)
        dup = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not dup.any():
            break
        slate[dup] = rng.integers(0, n_items, size=(int(dup.sum()), k))
    return Simulation(
        "items",
        [f"item{i}" for i in range(n_items)],
        X,
        _interaction(X, W, items[slate]),
        names=[f"u{j}" for j in range(d)],
        slate=slate,
        item_features=items,
        item_names=[f"f{j}" for j in range(f)],
    )


def described_sim(
    seed: int, rounds: int = 20_000, k: int = 10, d: int = 5, f: int = 6
) -> Simulation:
    """10 fixed actions, every one offered, each described by 6 numeric features; rewards
    through the same context x action-feature interaction as ``items``."""
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(k, f))
    W = rng.normal(size=(d, f)) * 2.0 / np.sqrt(f)
    X = rng.normal(size=(rounds, d)) / np.sqrt(d)
    return Simulation(
        "described",
        [f"action{i}" for i in range(k)],
        X,
        _interaction(X, W, np.broadcast_to(acts, (rounds, k, f))),
        names=[f"u{j}" for j in range(d)],
        item_features=acts,
        item_names=[f"f{j}" for j in range(f)],
    )


SIMULATORS = {
    "fixed": fixed_sim,
    "linear": linear_sim,
    "digits": digits_sim,
    "wine": wine_sim,
    "cancer": cancer_sim,
    "drift": drift_sim,
    "changing": changing_sim,
    "categorical": categorical_sim,
    "items": items_sim,
    "described": described_sim,
}

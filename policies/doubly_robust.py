"""Doubly robust bandit: per-action reward models learned from DR pseudo-rewards."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.base import (
    ContextBatch,
    Feedback,
    FloatArray,
    IntArray,
    Policy,
    PolicyError,
    check_floor,
    greedy_with_floor,
    importance_weights,
)
from policies.history import RowRing
from policies.knobs import FLOOR, SHARED, Knob
from policies.ridge import RidgeArms
from policies.shared import ModelRows


class DoublyRobust(Policy):
    """Contextual bandit whose reward models learn doubly robust pseudo-rewards.

    For a logged ``(x, a, r, p)`` every candidate ``a'`` gets the DR target
    (Dudik, Langford & Li, ICML 2011, "Doubly Robust Policy Evaluation and Learning";
    Vowpal Wabbit's ``--cb_type dr``)::

        y(a') = r_hat(x, a') + 1[a' = a] * w * (r - r_hat(x, a)),   w = min(1/p, max_weight)

    The reward models ``r_hat(x, a) = theta_a . x`` are linear, one per action:

    * **online**, every logged event takes one recursive-least-squares step towards its
      targets with gain ``learning_rate * lr_decay ** n_a`` (``n_a`` = the action's updates
      so far). For ``a' != a`` the target equals the prediction, so only the logged action
      moves, by its importance-weighted residual ``w (r - r_hat)``; with gain 1 and no
      decay the model is exactly the importance-weighted ridge regression.
    * **periodically** (every ``refit_every`` events) each action's model is re-solved in
      closed form (Cholesky) on the ``max_history`` most recent candidate rows with their
      DR targets recomputed under the current models, as a ridge regression centred on the
      current model: the rows of actions not taken anchor it, the taken rows correct it.
      This undoes what damped or decayed online steps left unlearned in recent evidence.

    Decisions score ``r_hat(x, a) + alpha * sqrt(x^T A_a^{-1} x)`` (``A_a`` the weighted
    design of the action's own observations, so only evidence shrinks the bonus); the best
    candidates share ``1 - floor`` and every candidate gets ``floor / K``.

    Parameters
    ----------
    n_features
        Feature dimension.
    alpha
        Exploration strength: the weight of the confidence bonus.
    learning_rate
        Gain of each online update of the reward models (1 = exact least squares).
    lr_decay
        Per-update decay of that gain, ``learning_rate * lr_decay ** n_a``.
    max_weight
        Clip of the importance weight ``1/p``.
    max_history
        Candidate rows kept (a numpy ring buffer) for the periodic refits.
    refit_every
        Logged events between refits (0 disables refits).
    l2
        Ridge penalty of the reward models.
    forgetting
        Weight of the past at each update of an action's model (exponential forgetting
        in the recursive least squares, 1.0 = off), for rewards that drift.
    shared, shared_dim
        ``"true"``: one reward model over candidate features instead of one per action
        (:mod:`policies.shared`), ``"auto"``: when the first batch carries them.
    floor
        Probability mass spread uniformly over the candidates.
    seed
        Exploration seed, combined with each event id.

    Examples
    --------
    >>> import numpy as np
    >>> from policies.base import ContextBatch, Feedback
    >>> p = DoublyRobust(n_features=2, alpha=0.0, seed=0)
    >>> batch = ContextBatch(np.ones((2, 2)), ["a", "b"], np.array([0, 2]), ["e1"])
    >>> for _ in range(10):
    ...     p.learn(Feedback(batch, np.array([1]), np.array([1.0]), np.array([0.5])))
    >>> p.choose(batch).pmf.round(3).tolist()
    [0.005, 0.995]
    """

    name = "doubly_robust"
    # fmt: off
    knobs = (
        Knob("alpha", "dr_alpha", float, 0.3, "UCB width", ge=0.0, tune=("float", 0.5, 3.0)),
        Knob("learning_rate", "dr_learning_rate", float, 1.0, "correction step", gt=0.0,
             tune=("log", 0.01, 0.3)),
        Knob("lr_decay", "dr_lr_decay", float, 1.0, "step decay per update", gt=0.0, le=1.0,
             tune=("float", 0.99, 0.9999)),
        Knob("max_weight", "dr_max_weight", float, 2.0, "importance weight cap", ge=1.0,
             tune=("float", 2.0, 10.0)),
        Knob("max_history", "dr_max_history", int, 5000, "refit history", ge=1),
        Knob("forgetting", "dr_forgetting", float, 1.0, "weight of the past per update (1: off)",
             gt=0.0, le=1.0, tune=("float", 0.99, 1.0)),
        FLOOR,
        *SHARED,
    )
    # fmt: on

    def __init__(
        self,
        n_features: int,
        alpha: float = 0.5,
        learning_rate: float = 1.0,
        lr_decay: float = 1.0,
        max_weight: float = 20.0,
        max_history: int = 5000,
        refit_every: int = 5000,
        l2: float = 1.0,
        floor: float = 0.01,
        seed: int = 0,
        forgetting: float = 1.0,
        shared: str = "false",
        shared_dim: int = 256,
    ) -> None:
        super().__init__(n_features, seed)
        if alpha < 0:
            raise PolicyError(f"alpha must be >= 0, got {alpha}")
        if learning_rate <= 0:
            raise PolicyError(f"learning_rate must be > 0, got {learning_rate}")
        if not 0 < lr_decay <= 1:
            raise PolicyError(f"lr_decay must be in (0, 1], got {lr_decay}")
        if max_weight < 1:
            raise PolicyError(f"max_weight must be >= 1, got {max_weight}")
        if refit_every < 0:
            raise PolicyError(f"refit_every must be >= 0, got {refit_every}")
        self.alpha = float(alpha)
        self.learning_rate = float(learning_rate)
        self.lr_decay = float(lr_decay)
        self.max_weight = float(max_weight)
        self.max_history = int(max_history)
        self.refit_every = int(refit_every)
        self.l2 = float(l2)
        self.floor = check_floor(floor)
        self.forgetting = float(forgetting)
        self._inputs = ModelRows(n_features, shared, shared_dim, seed, self._new_models)
        self._new_models(self._inputs.width)
        self._since_refit = 0

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "alpha": self.alpha,
            "learning_rate": self.learning_rate,
            "lr_decay": self.lr_decay,
            "max_weight": self.max_weight,
            "max_history": self.max_history,
            "refit_every": self.refit_every,
            "l2": self.l2,
            "floor": self.floor,
            "forgetting": self.forgetting,
            "shared": self._inputs.mode,
            "shared_dim": self._inputs.dim,
        }

    def _new_models(self, width: int) -> None:
        """The reward models and the refit ring of their rows, for rows ``width`` wide."""
        self._arms = RidgeArms(width, self.l2, self.forgetting)
        self._history = RowRing(width, self.max_history)

    def _rows(self, batch: ContextBatch) -> tuple[IntArray, FloatArray]:
        """Each row's model slot and features (per action, or one shared model)."""
        return self._inputs.rows(batch, lambda: self._arms)

    def _distribution(self, batch: ContextBatch) -> FloatArray:
        idx, X = self._rows(batch)
        score = self._arms.predict(idx, X)
        if self.alpha:
            score = score + self.alpha * self._arms.widths(idx, X, batch.uniform_layout())
        return greedy_with_floor(score, batch, self.floor)

    def _learn(self, feedback: Feedback) -> None:
        batch = feedback.batch
        idx, X = self._rows(batch)
        rows = feedback.row
        w = importance_weights(feedback.probability, self.max_weight)
        a = idx[rows]
        eta = None
        if self.learning_rate != 1.0 or self.lr_decay != 1.0:
            eta = self.learning_rate * self.lr_decay ** self._arms.counts[a].astype(np.float64)
        # The DR residual is zero for every candidate but the logged one (see docstring).
        self._arms.update(a, X[rows], feedback.reward, w=w, eta=eta)
        ev = batch.row_event()
        chosen = np.zeros(len(idx), dtype=bool)
        chosen[rows] = True
        self._history.extend(X, idx, chosen, w[ev], feedback.reward[ev])
        self._since_refit += batch.n_events
        if self.refit_every and self._since_refit >= self.refit_every:
            self.refit()

    def trim(self) -> int:
        freed = self._history.size
        self._history = RowRing(self._arms.n_features, self.max_history)
        return freed

    def refit(self) -> None:
        """Closed-form ridge refit of every action on its recent rows' DR targets."""
        self._since_refit = 0
        h = self._history
        n = h.size
        if n == 0:
            return
        X, act = h.X[:n], h.act[:n]
        pred = np.einsum("nd,nd->n", X, self._arms.theta[act])
        # y(a') = r_hat(x, a') + 1[a' = a] * w * (r - r_hat(x, a))
        y = pred + h.chosen[:n] * h.weight[:n] * (h.reward[:n] - pred)
        # Imported at the first refit: a service without doubly robust domains never pays
        # for scipy.linalg's memory.
        from scipy.linalg import cho_factor, cho_solve

        eye = self.l2 * np.eye(self._arms.n_features)
        resid = y - pred  # zero on the rows of actions not taken
        for b in np.unique(act):
            mask = act == b
            Xb = X[mask]
            # Ridge towards the current model rather than towards zero, so directions the
            # window does not cover keep what was learned before it:
            # theta_b = argmin |Xb t - y_b|^2 + l2 |t - theta_b|^2
            #         = theta_b + (l2 I + Xb^T Xb)^{-1} Xb^T (y_b - Xb theta_b)
            step = cho_solve(cho_factor(eye + Xb.T @ Xb), Xb.T @ resid[mask])
            self._arms.theta[b] += step

    def _arrays(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        extra, arrays = self._arms.arrays()
        hx, ha = self._history.arrays("hist_")
        extra = {**extra, **hx, "since_refit": self._since_refit, "shared_on": self._inputs.on}
        return extra, {**arrays, **ha}

    def _load_arrays(self, extra: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> None:
        self._inputs.load(extra)
        self._arms.load(extra, arrays)
        self._history.load(extra, arrays, "hist_")
        if (
            self._history.size
            and int(self._history.act[: self._history.size].max()) >= self._arms.n_actions
        ):
            raise PolicyError("history names an action the policy does not know")
        since = extra.get("since_refit")
        if not isinstance(since, int) or since < 0:
            raise PolicyError("policy state has a bad since_refit")
        self._since_refit = since

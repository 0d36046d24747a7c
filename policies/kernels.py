"""Compiled per-event loops (numba) for the updates numpy cannot vectorise.

A recursive-least-squares step depends on the previous step of the same action, so a
batch is a sequential loop; in Python each step costs ~6 µs of call overhead around
~1 µs of arithmetic at d = 64. numba compiles the loop (cached on disk after the first
run), which is what lets the linear policies and the offset tree keep up with a stream.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True)
def rls_update(A_inv, theta, counts, idx, X, y, w, eta):
    """Weighted RLS steps, in order, on symmetric inverses ``A_inv[a]`` (in place).

    For each row k with action a, weight w_k > 0 and gain eta_k:
    ``g = A^{-1} x``, ``denom = 1 + w x.g``;
    ``A^{-1} -= w g g^T / denom`` (Sherman–Morrison);
    ``theta_a += eta * w * (y - theta_a . x) / denom * g``.
    """
    d = X.shape[1]
    g = np.empty(d)
    for k in range(idx.shape[0]):
        wk = w[k]
        if wk <= 0.0:
            continue
        a = idx[k]
        ai = A_inv[a]
        x = X[k]
        xg = 0.0
        for i in range(d):
            s = 0.0
            for j in range(d):
                s += ai[i, j] * x[j]
            g[i] = s
            xg += x[i] * s
        denom = 1.0 + wk * xg
        c = wk / denom
        for i in range(d):
            gi = g[i] * c
            for j in range(d):
                ai[i, j] -= gi * g[j]
        pred = 0.0
        for i in range(d):
            pred += theta[a, i] * x[i]
        step = eta[k] * wk * (y[k] - pred) / denom
        for i in range(d):
            theta[a, i] += step * g[i]
        counts[a] += 1


@njit(cache=True, nogil=True)
def ts_win_shares(mean, width, v, offsets, start, n_draws, table):
    """Share of ``n_draws`` posterior draws each row wins within its event.

    Draw m of the row at position ``pos`` in event i uses the normal
    ``table[(start_i + 7919 m + 104729 pos) & (len(table) - 1)]``; an exact tie goes to
    the first candidate.
    """
    out = np.zeros(mean.shape[0])
    mask = table.shape[0] - 1
    for i in range(offsets.shape[0] - 1):
        s, e = offsets[i], offsets[i + 1]
        for m in range(n_draws):
            best = -np.inf
            bj = s
            for r in range(s, e):
                z = table[(start[i] + m * 7919 + (r - s) * 104729) & mask]
                sc = mean[r] + v * width[r] * z
                if sc > best:
                    best = sc
                    bj = r
            out[bj] += 1.0
    return out / n_draws

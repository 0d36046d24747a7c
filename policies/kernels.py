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
def rls_update(A_inv, theta, counts, idx, X, y, w, eta, lam=1.0, cap=0.0):
    """Weighted RLS steps, in order, on symmetric inverses ``A_inv[a]`` (in place).

    For each row k with action a, weight w_k > 0 and gain eta_k:
    ``g = A^{-1} x``, ``denom = 1 + w x.g``;
    ``A^{-1} -= w g g^T / denom`` (Sherman–Morrison);
    ``theta_a += eta * w * (y - theta_a . x) / denom * g``.

    With ``lam`` < 1 each step first forgets: ``A^{-1} /= lam`` (``A = lam * A``), then
    rows and columns whose variance passed ``cap`` (the prior's) are scaled back to it —
    ``D A^{-1} D`` with ``D`` diagonal, still positive definite — so a direction no
    context excites keeps the prior instead of winding up without bound.
    """
    d = X.shape[1]
    g = np.empty(d)
    r = np.empty(d)
    for k in range(idx.shape[0]):
        wk = w[k]
        if wk <= 0.0:
            continue
        a = idx[k]
        ai = A_inv[a]
        x = X[k]
        if lam < 1.0:
            for i in range(d):
                v = ai[i, i] / lam
                r[i] = np.sqrt(cap / v) if v > cap else 1.0
            for i in range(d):
                ri = r[i] / lam
                for j in range(d):
                    ai[i, j] *= ri * r[j]
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


@njit(cache=True, nogil=True, fastmath=True)
def _node_q(weights, node, x, kind, shift):
    """P(right) of node ``node`` for context ``x``, its score moved by ``shift``: least
    squares (0: ``clip(w.x + shift)``) or logistic (1: ``sigmoid(w.x + 4 shift)``)."""
    z = 0.0
    for j in range(x.shape[0]):
        z += weights[node, j] * x[j]
    if kind == 0:
        return min(1.0, max(0.0, z + shift))
    z = min(50.0, max(-50.0, z + 4.0 * shift))
    return 1.0 / (1.0 + np.exp(-z))


@njit(cache=True, nogil=True)
def _contested(heap, s, e, child, level):
    """Whether another candidate of the event lies on the other side of ``child``'s parent."""
    sib = child ^ 1
    for r in range(s, e):  # noqa: SIM110 - numba compiles loops, not generators
        if (heap[r] >> level) == sib:
            return True
    return False


@njit(cache=True, nogil=True)
def ot_leaf_probs(heap, offsets, xe, weights, kind, depth, sharpness, shift):
    """Probability of each candidate leaf: the product of its path's routing odds.

    A node routes right with ``q^s / (q^s + (1-q)^s)`` (``s = sharpness``; ``s = 0`` routes
    hard, even odds splitting evenly); a node whose other side holds no candidate of the
    event passes through. ``shift[r, level]``: row ``r``'s node's score shift at that level.
    """
    prob = np.ones(heap.shape[0])
    for i in range(offsets.shape[0] - 1):
        s, e = offsets[i], offsets[i + 1]
        for r in range(s, e):
            p = 1.0
            for level in range(depth):
                child = heap[r] >> level
                if not _contested(heap, s, e, child, level):
                    continue
                q = _node_q(weights, child >> 1, xe[i], kind, shift[r, level])
                if sharpness <= 0.0:
                    route = 1.0 if q > 0.5 else (0.0 if q < 0.5 else 0.5)
                else:
                    qs = q**sharpness
                    ps = (1.0 - q) ** sharpness
                    route = qs / (qs + ps) if qs + ps > 0.0 else 0.5
                p *= route if (child & 1) == 1 else 1.0 - route
            prob[r] = p
    return prob


@njit(cache=True, nogil=True)
def ot_contested_at(heap, offsets, leaf, level, alive):
    """Events still ``alive`` whose logged leaf's node at ``level`` has a rival candidate.

    ``leaf[i]`` is event ``i``'s logged leaf; the node at ``level`` is ``leaf >> (level+1)``.
    """
    out = np.empty(offsets.shape[0] - 1, dtype=np.int64)
    m = 0
    for i in range(offsets.shape[0] - 1):
        if alive[i] and _contested(heap, offsets[i], offsets[i + 1], leaf[i] >> level, level):
            out[m] = i
            m += 1
    return out[:m]


@njit(cache=True, nogil=True)
def ot_advantages(heap, offsets, score, depth):
    """``[rows, depth]``: at each row's node per level, the best ``score`` among the event's
    candidates on the node's right side less the best on its left (0 where a side is empty).
    """
    out = np.zeros((heap.shape[0], depth))
    for i in range(offsets.shape[0] - 1):
        s, e = offsets[i], offsets[i + 1]
        for level in range(depth):
            for r in range(s, e):
                child = heap[r] >> level
                own = -np.inf
                other = -np.inf
                for j in range(s, e):
                    c = heap[j] >> level
                    if c == child:
                        own = max(own, score[j])
                    elif c == (child ^ 1):
                        other = max(other, score[j])
                if other > -np.inf:
                    out[r, level] = own - other if (child & 1) == 1 else other - own
    return out


@njit(cache=True, nogil=True)
def ot_learn_least_squares(heap, offsets, leaf, xe, A_inv, theta, counts, depth, gain, beat, shift):
    """The offset tree's bottom-up training with least-squares nodes, in place.

    Level by level from the leaves: every event still alive whose node at this level has a
    rival candidate teaches that node (label: the logged action's side if ``beat``, else
    the other side; weight ``gain``; RLS steps in event order), then stays alive only if
    the node, updated, routes its context towards the action. ``shift[i, level]``: the
    score shift of event ``i``'s node at that level (the node learns the label less it).
    Same steps as ``OffsetTree._learn``'s generic path.
    """
    n = offsets.shape[0] - 1
    alive = np.ones(n, dtype=np.bool_)
    rows = np.empty(n, dtype=np.int64)
    nodes = np.empty(n, dtype=np.int64)
    labels = np.empty(n)
    weights = np.empty(n)
    eta = np.ones(n)
    for level in range(depth):
        ev = ot_contested_at(heap, offsets, leaf, level, alive)
        k = 0
        for i in ev:
            if gain[i] > 0.0:
                child = leaf[i] >> level
                side = child & 1
                rows[k] = i
                nodes[k] = child >> 1
                labels[k] = (side if beat[i] else 1 - side) - shift[i, level]
                weights[k] = gain[i]
                k += 1
        if k:
            rls_update(
                A_inv, theta, counts, nodes[:k], xe[rows[:k]], labels[:k], weights[:k], eta[:k]
            )
        if level + 1 < depth:  # the last level's verdict decides nothing
            for i in ev:
                child = leaf[i] >> level
                q = _node_q(theta, child >> 1, xe[i], 0, shift[i, level])
                if ((child & 1) == 1 and q < 0.5) or ((child & 1) == 0 and q > 0.5):
                    alive[i] = False


@njit(cache=True, nogil=True)
def sample_segments(pmf, offsets, u):
    """Inverse-CDF sample of one row per event: the same arithmetic as a per-event cumsum.

    Row j of event i is chosen iff ``u_i * total_i`` falls in ``[cdf_{j-1}, cdf_j)``.
    """
    n = offsets.shape[0] - 1
    rows = np.empty(n, dtype=np.int64)
    for i in range(n):
        s, e = offsets[i], offsets[i + 1]
        total = 0.0
        for r in range(s, e):
            total += pmf[r]
        target = u[i] * total
        c = 0.0
        pick = e - 1
        for r in range(s, e):
            c += pmf[r]
            if c > target:
                pick = r
                break
        rows[i] = pick
    return rows


@njit(cache=True, nogil=True)
def _best_score(scores, s, e):
    """The largest of ``scores[s:e]``; a nan among them (it wins, as in np.max) raises:
    there is no distribution to log a probability from."""
    m = scores[s]
    for r in range(s + 1, e):
        if scores[r] > m or scores[r] != scores[r]:
            m = scores[r]
    if m != m:
        raise ValueError("a candidate's score is nan")
    return m


@njit(cache=True, nogil=True)
def greedy_floor(scores, offsets, floor):
    """Per event: its best-scoring rows (within 1e-12) share ``1 - floor`` evenly and every
    row gets ``floor / K`` more; the same arithmetic as the numpy expression it replaces."""
    out = np.empty(scores.shape[0])
    for i in range(offsets.shape[0] - 1):
        s, e = offsets[i], offsets[i + 1]
        if e == s:
            continue
        m = _best_score(scores, s, e)
        n_best = 0.0
        for r in range(s, e):
            if scores[r] >= m - 1e-12:
                n_best += 1.0
        k = e - s
        for r in range(s, e):
            best = 1.0 if scores[r] >= m - 1e-12 else 0.0
            out[r] = floor / k + (1.0 - floor) * best / n_best
    return out


@njit(cache=True, nogil=True)
def inverse_gap(scores, offsets, gamma):
    """Inverse-gap weighting per event (SquareCB): a candidate ``gap`` below the best score
    gets ``1 / (K + gamma * gap)``; the best (within 1e-12) share the rest evenly."""
    out = np.empty(scores.shape[0])
    for i in range(offsets.shape[0] - 1):
        s, e = offsets[i], offsets[i + 1]
        if e == s:
            continue
        m = _best_score(scores, s, e)
        k = e - s
        rest = 0.0
        n_best = 0.0
        for r in range(s, e):
            gap = m - scores[r]
            if gap <= 1e-12:
                n_best += 1.0
            else:
                out[r] = 1.0 / (k + gamma * gap)
                rest += out[r]
        share = (1.0 - rest) / n_best
        for r in range(s, e):
            if m - scores[r] <= 1e-12:
                out[r] = share
    return out


@njit(cache=True, nogil=True)
def dense_rows(slots, vals, lens, sizes, d):
    """Event i's hashed features (``lens[i]`` of ``slots``/``vals``, summed in order where
    keys share a slot, as ``np.bincount``) with the bias in column 0, as ``sizes[i]``
    identical rows: the ``[P, d]`` matrix of a batch."""
    X = np.zeros((sizes.sum(), d))
    pos = 0
    row = 0
    for i in range(lens.shape[0]):
        k = sizes[i]
        if k > 0:
            for j in range(pos, pos + lens[i]):
                X[row, slots[j]] += vals[j]
            X[row, 0] = 1.0
            for r in range(row + 1, row + k):
                X[r, :] = X[row, :]
        pos += lens[i]
        row += k
    return X


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel now, not on the first event."""
    d = 2
    A = np.broadcast_to(np.eye(d), (2, d, d)).copy()
    theta = np.zeros((2, d))
    counts = np.zeros(2, dtype=np.int64)
    idx = np.zeros(1, dtype=np.int64)
    X = np.ones((1, d))
    one = np.ones(1)
    rls_update(A, theta, counts, idx, X, one, one, one)
    offsets = np.array([0, 2], dtype=np.int64)
    ts_win_shares(
        np.zeros(2), np.ones(2), 1.0, offsets, np.zeros(1, dtype=np.int64), 2, np.zeros(4)
    )
    heap = np.array([2, 3], dtype=np.int64)
    for kind in (0, 1):
        ot_leaf_probs(heap, offsets, X, theta, kind, 1, 10.0, np.zeros((2, 1)))
    ot_contested_at(heap, offsets, heap[:1], 0, np.ones(1, dtype=np.bool_))
    ot_learn_least_squares(
        heap,
        offsets,
        heap[:1],
        X,
        A,
        theta,
        counts,
        1,
        one,
        np.ones(1, dtype=np.bool_),
        np.zeros((1, 1)),
    )
    ot_advantages(heap, offsets, np.zeros(2), 1)
    sample_segments(np.array([0.5, 0.5]), offsets, np.array([0.3]))
    greedy_floor(np.array([0.5, 0.5]), offsets, 0.1)
    inverse_gap(np.array([0.5, 0.4]), offsets, 10.0)
    dense_rows(idx, one, np.ones(1, dtype=np.int64), offsets[1:], d)

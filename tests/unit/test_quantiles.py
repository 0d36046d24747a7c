"""The metrics report's per-domain latency percentiles equal numpy's (linear method)."""

import math

import numpy as np

from stream.observe.metrics import quantiles


def test_quantiles_match_numpy_per_group() -> None:
    rng = np.random.default_rng(7)
    groups = [rng.exponential(5.0, n).tolist() for n in (1, 0, 2, 3, 10, 999, 5000)]
    groups.append([4.0] * 12)  # one batch's latency repeated
    got = quantiles(groups, (50, 95, 99))
    for g, row in zip(groups, got, strict=True):
        if g:
            np.testing.assert_allclose(row, np.percentile(g, [50, 95, 99]), rtol=0, atol=1e-9)
        else:
            assert all(math.isnan(x) for x in row)


def test_quantiles_of_nothing() -> None:
    assert quantiles([], (99,)) == []
    assert math.isnan(quantiles([[]], (99,))[0][0])

"""Off-policy estimators on synthetic logs whose true policy values are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from policies.estimators import OnlineEstimate, estimate

MEANS = np.array([0.2, 0.5, 0.7])
LOGGING = np.array([0.5, 0.3, 0.2])
TARGET = np.array([0.1, 0.2, 0.7])
TRUE_VALUE = float(TARGET @ MEANS)  # 0.61 exactly


def log(n: int, seed: int, model_bias: float = 0.0):
    rng = np.random.default_rng(seed)
    a = rng.choice(3, size=n, p=LOGGING)
    r = (rng.random(n) < MEANS[a]).astype(float)
    r_hat = np.broadcast_to(MEANS + model_bias, (n, 3))
    return TARGET[a], LOGGING[a], r, r_hat @ TARGET, r_hat[np.arange(n), a]


@pytest.mark.parametrize("bias", [0.0, 0.3])  # DR stays unbiased with a wrong reward model
def test_each_estimator_covers_the_true_value(bias):
    est = estimate(*log(20000, seed=1, model_bias=bias))
    for name in ("ips", "snips", "dr"):
        e = est[name]
        assert e.low < TRUE_VALUE < e.high, (name, e)
        assert e.high - e.low < 0.05, (name, e)


def test_intervals_cover_about_95_percent_of_the_time():
    covered = {"ips": 0, "snips": 0, "dr": 0}
    runs = 300
    for seed in range(runs):
        est = estimate(*log(2000, seed, model_bias=0.1))
        for name in covered:
            covered[name] += est[name].low < TRUE_VALUE < est[name].high
    for name, c in covered.items():
        assert 0.91 <= c / runs <= 0.99, (name, c / runs)


def test_a_good_reward_model_makes_dr_tighter_than_ips():
    est = estimate(*log(5000, seed=3))
    assert est["dr"].high - est["dr"].low < 0.7 * (est["ips"].high - est["ips"].low)


def test_streaming_equals_batch_and_survives_a_state_round_trip():
    pi_a, p, r, dm, rh = log(3000, seed=4)
    acc = OnlineEstimate()
    for s in range(0, 3000, 7):
        acc.update(pi_a[s : s + 7], p[s : s + 7], r[s : s + 7], dm[s : s + 7], rh[s : s + 7])
    batch = estimate(pi_a, p, r, dm, rh)
    again = OnlineEstimate.from_state(acc.state()).result()
    for name in ("ips", "snips", "dr"):
        assert acc.result()[name].value == pytest.approx(batch[name].value, rel=1e-12)
        assert again[name] == acc.result()[name]
    with pytest.raises(ValueError):
        OnlineEstimate.from_state([1.0, float("nan")] + [0.0] * 8)


def test_on_policy_evaluation_is_the_plain_mean():
    pi_a, p, r, dm, rh = log(4000, seed=5)
    est = estimate(p, p, r)  # target == logging policy: w = 1
    assert est["ips"].value == pytest.approx(r.mean())
    assert est["snips"].value == pytest.approx(r.mean())

"""Deciding many domains in one policy call gives exactly each domain's own decisions."""

import numpy as np

from policies.base import Feedback
from policies.epsilon_greedy import EpsilonGreedy
from policies.features import FeatureHasher
from stream.config import load_settings
from stream.domains import MANY_DOMAINS, Domains
from stream.kafka.codec import ContextEvent

ACTIONS = ["a", "b", "c", "d", "e"]


def _trained_policies(h: FeatureHasher, rng: np.random.Generator) -> list[EpsilonGreedy]:
    pols = [EpsilonGreedy(h.n_features, 0.05, seed=i) for i in range(12)]
    for p in pols:
        for t in range(30):
            cands = ACTIONS[: rng.integers(1, 5)]
            e = h.encode({"x": float(rng.random()), "t": str(rng.integers(3))}, cands)
            b = h.assemble([e], [f"k{t}"])
            row = np.array([rng.integers(len(cands))])
            p.learn(Feedback(b, row, np.array([float(rng.random())]), np.array([0.5])))
    return pols


def test_epsilon_greedy_choose_many_equals_each_policys_choose() -> None:
    rng = np.random.default_rng(0)
    h = FeatureHasher(16)
    pols = _trained_policies(h, rng)
    for trial in range(100):
        chosen = [pols[j] for j in rng.choice(len(pols), rng.integers(1, 8), replace=False)]
        encs, keys, starts = [], [], [0]
        for _ in chosen:
            for _ in range(rng.integers(1, 5)):  # unseen actions and ragged candidate lists
                cands = list(rng.permutation(ACTIONS)[: rng.integers(1, 6)])
                x = {"x": float(rng.random()), "t": str(rng.integers(3))}
                encs.append(h.encode(x, cands))
                keys.append(f"ev{trial}-{len(keys)}")
            starts.append(len(encs))
        many = EpsilonGreedy.choose_many(chosen, h.assemble(encs, keys), starts)
        for i, p in enumerate(chosen):
            a, b = starts[i], starts[i + 1]
            own = p.choose(h.assemble(encs[a:b], keys[a:b]))
            assert np.array_equal(own.row, many[i].row)
            assert np.array_equal(own.probability, many[i].probability)  # bit for bit
            assert np.array_equal(own.pmf, many[i].pmf)


def test_decide_many_equals_one_decide_per_domain(tmp_path) -> None:
    s = load_settings(state_dir=tmp_path, enable_rl_advanced=True, rollout_percentage=0.5)
    rng = np.random.default_rng(1)

    def events(n: int) -> list[list[ContextEvent]]:
        return [
            [
                ContextEvent(f"{d}-{i}", f"dom{d}", {"x": float(rng.random())}, ACTIONS[:4])
                for i in range(rng.integers(1, 4))
            ]
            for d in range(n)
        ]

    batches = events(3 * MANY_DOMAINS)
    together, alone = (
        Domains(s, FeatureHasher(s.feature_dim)),
        Domains(s, FeatureHasher(s.feature_dim)),
    )
    items = [(together.get_or_create(evs[0].domain), evs) for evs in batches]
    many = together.decide_many(items)  # type: ignore[arg-type]
    assert {sh.variant for served in many for sh in served} == {"control", "treatment"}
    for evs, served in zip(batches, many, strict=True):
        state = alone.get_or_create(evs[0].domain)
        assert state is not None
        own = alone.decide(state, evs)
        assert [(sh.variant, [e.event_id for e in sh.events]) for sh in served] == [
            (sh.variant, [e.event_id for e in sh.events]) for sh in own
        ]
        for a, b in zip(served, own, strict=True):
            assert np.array_equal(a.decisions.row, b.decisions.row)
            assert np.array_equal(a.decisions.probability, b.decisions.probability)
    assert sum(st.decisions for st in together.states.values()) == sum(map(len, batches))


def test_a_domain_whose_decide_raises_inside_the_group_is_decided_alone(tmp_path) -> None:
    """One broken policy among many: the others' contexts are decided, its own are
    dead-lettered (internal_error), as when each domain was decided by itself."""
    import time

    from stream.bench import hotpath

    s = load_settings(
        state_dir=tmp_path, on_processing_error="dead_letter", max_processing_errors=1000
    )
    (batch,) = hotpath.traffic(s, 2 * MANY_DOMAINS, 4 * MANY_DOMAINS, 1, seed=3)
    svc, sink = hotpath._service(s)
    broken = svc.domains.get_or_create("dom0", 0)
    assert broken is not None
    broken.baseline._arms.theta = np.zeros((4, 3))  # type: ignore[attr-defined]  # wrong width
    svc.processor.handle(batch, time.time(), time.perf_counter())
    contexts = [m for m in batch if m.topic() == s.topic_contexts]
    mine = sum(m.key() == b"dom0" for m in contexts)
    assert mine and svc.stats.decisions == len(contexts) - mine
    assert svc.metrics.rejected_by_code() == {"internal_error": mine}


def test_a_nan_score_raises_rather_than_log_a_nan_probability() -> None:
    import pytest

    from policies.base import ContextBatch, greedy_with_floor

    batch = ContextBatch(np.ones((3, 2)), ["a", "b", "c"], np.array([0, 3]), ["e"])
    with pytest.raises(ValueError, match="nan"):
        greedy_with_floor(np.array([0.1, np.nan, 0.3]), batch, 0.1)

"""Deciding many domains in one policy call gives exactly each domain's own decisions."""

import numpy as np
import pytest

from policies.base import Feedback
from policies.epsilon_greedy import EpsilonGreedy
from policies.features import FeatureHasher
from stream.config import load_settings
from stream.core.domains import MANY_DOMAINS, Domains
from stream.kafka.codec import ContextEvent
from tests.builders import context_batch

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

    from policies.base import greedy_with_floor

    batch = context_batch(np.ones((1, 2)), keys=["e"])
    with pytest.raises(ValueError, match="nan"):
        greedy_with_floor(np.array([0.1, np.nan, 0.3]), batch, 0.1)


def _feedback_domains(tmp_path, rng: np.random.Generator, broken: str | None = None):
    """Domains with buffered rewards (every policy kind that learns, shadows included);
    ``broken``'s first reward holds a candidate feature slot past the dimension."""
    from policies.features import EncodedContext
    from stream.core.join import Pending

    s = load_settings(
        state_dir=tmp_path,
        update_interval=1000,
        enable_rl_advanced=True,
        enable_rl_shadow_eval=True,
        shadow_policies=["linucb", "offset_tree"],
    )
    h = FeatureHasher(s.feature_dim)
    errors: list[str] = []
    doms = Domains(s, h, on_learn_error=lambda exc, st, buf: errors.append(st.name))
    for d in range(30):
        st = doms.get_or_create(f"dom{d}")
        assert st is not None
        for i in range(int(rng.integers(1, 40))):
            cands = list(rng.permutation(ACTIONS)[: rng.integers(1, 6)])
            enc = h.encode({"x": float(rng.random()), "t": str(rng.integers(3))}, cands)
            if st.name == broken and i == 0:
                bad = {cands[0]: ([s.feature_dim + 5], [1.0])}
                enc = EncodedContext(enc.context, enc.candidates, bad)
            chosen = int(rng.integers(len(cands)))
            p = Pending(st.name, f"e{i}", enc, chosen, 0.25, "eg", "control", 0, 1)
            doms.learner.add(st, p, float(rng.random()), 0.0)
    return doms, errors


def test_learning_many_domains_in_one_chunk_equals_learning_each_alone(tmp_path, monkeypatch):
    import stream.core.learner

    together, _ = _feedback_domains(tmp_path / "a", np.random.default_rng(5))
    assert together.learner.learn(0.0, force=True) > 0
    monkeypatch.setattr(stream.core.learner, "LEARN_CHUNK", 0)  # every domain its own call
    alone, _ = _feedback_domains(tmp_path / "b", np.random.default_rng(5))
    alone.learner.learn(0.0, force=True)
    for name, st in together.states.items():
        for role, pol in st.roles().items():
            mine = alone.states[name].roles()[role].state_dict()[1]
            for key, arr in pol.state_dict()[1].items():
                assert np.array_equal(arr, mine[key]), (name, role, key)  # bit for bit


def test_a_domain_whose_rewards_cannot_be_assembled_fails_alone(tmp_path):
    doms, errors = _feedback_domains(tmp_path, np.random.default_rng(6), broken="dom7")
    n = sum(len(st.buffer) for st in doms.states.values())
    lost = len(doms.states["dom7"].buffer)
    assert doms.learner.learn(0.0, force=True) == n - lost
    assert errors == ["dom7"]
    assert all(st.baseline.n_learned > 0 for name, st in doms.states.items() if name != "dom7")
    assert doms.states["dom7"].baseline.n_learned == 0


@pytest.mark.parametrize("where", [0, 1, 2])
def test_both_exploration_kernels_refuse_a_nan_anywhere(where: int) -> None:
    from policies.kernels import greedy_floor, inverse_gap

    scores = np.array([0.1, 0.2, 0.3])
    scores[where] = np.nan
    offsets = np.array([0, 3], dtype=np.int64)
    for kernel, arg in ((greedy_floor, 0.1), (inverse_gap, 10.0)):
        with pytest.raises(ValueError, match="nan"):
            kernel(scores, offsets, arg)

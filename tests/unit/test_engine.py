"""The Kafka-free core (stream/core/engine.py) through its outcomes, with no broker.

The tests play the caller's part as the processor and the Bandit do: a record read advances
its partition's stream time (``engine.clock.read``), contexts go to :meth:`Engine.decide`,
each new decision is "published" and then claims its early reward, rewards go to
:meth:`Engine.reward`, and :meth:`Engine.expire` / :meth:`Engine.learn` run when the test
says. Record times and the wall clock of the turn (``engine.now``) are set explicitly, so
every window is judged by the records' time alone.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from policies.epsilon_greedy import EpsilonGreedy
from policies.features import FeatureHasher
from stream.config import Settings, load_settings
from stream.core.domain import DomainState
from stream.core.engine import Engine, Published
from stream.core.events import ContextEvent, Decision, RewardEvent
from stream.core.outcomes import (
    ACTION_LIMIT,
    DOMAIN_LIMIT,
    DUPLICATE_EVENT,
    DUPLICATE_REWARD,
    EXPIRED_EVENT,
    UNKNOWN_EVENT,
    Decided,
    Expired,
    Held,
    Joined,
    Outcome,
    Refused,
    Republished,
)

DOMAIN = "shop"
PART = 0
CANDS = ["a", "b", "c"]
WAIT = 10.0  # RL_REWARD_WAIT_S of every test
T0 = 1_700_000_000.0  # the first context's record time (epoch seconds)
NOW = T0 + 0.5  # the wall clock of the turn, unless a test moves it
DEFAULT = 0.25  # RL_DEFAULT_REWARD: distinct from every reward a test sends


# -- builders --------------------------------------------------------------------------------
def make_settings(**overrides: Any) -> Settings:
    """Windows of WAIT s that close at their deadline (no grace), no early wait, and
    learning only when a test forces it (or asks for the cadence it overrides)."""
    base: dict[str, Any] = {
        "seed": 0,
        "epsilon": 0.3,
        "reward_wait_s": WAIT,
        "reward_grace_s": 0.0,
        "reward_quiet_grace_s": 0.0,
        "reward_early_wait_s": 0.0,
        "default_reward": DEFAULT,
        "update_interval": 10_000,
        "update_max_delay_s": 3600.0,
    }
    return load_settings(**{**base, **overrides})


def make_engine(**overrides: Any) -> Engine:
    s = make_settings(**overrides)
    engine = Engine(s, FeatureHasher(s.feature_dim, seed=s.seed))
    engine.now = NOW
    return engine


def ctx(
    eid: str, t: float = T0, domain: str = DOMAIN, candidates: list[str] | None = None
) -> ContextEvent:
    cands = list(CANDS if candidates is None else candidates)
    return ContextEvent(eid, domain, {"x": 1.0}, cands, source=f"ctx:{eid}", record_time=t)


def rew(
    eid: str, value: float = 1.0, t: float = T0 + 1.0, domain: str = DOMAIN, source: str = ""
) -> RewardEvent:
    return RewardEvent(eid, domain, value, source=source or f"rew:{eid}", record_time=t)


def read_contexts(
    engine: Engine, events: list[ContextEvent], published: Published | None = None
) -> list[Outcome]:
    """As the processor: the records advance their partition's stream time, the engine
    decides them, and every new decision (published) claims its early reward."""
    for ev in events:
        engine.clock.read(True, PART, ev.record_time)
    by_domain: dict[str, list[ContextEvent]] = {}
    for ev in events:
        by_domain.setdefault(ev.domain, []).append(ev)
    out = engine.decide([(d, evs, PART) for d, evs in by_domain.items()], published)
    return out + [c for o in out if isinstance(o, Decided) for c in engine.claim_early(o)]


def decide(engine: Engine, ev: ContextEvent) -> Decided:
    """One context that must be decided (and claims nothing)."""
    out = read_contexts(engine, [ev])
    assert len(out) == 1 and isinstance(out[0], Decided), out
    return out[0]


def read_reward(engine: Engine, r: RewardEvent) -> list[Outcome]:
    """As the processor: the record advances its partition's stream time, then joins."""
    engine.clock.read(False, PART, r.record_time)
    return engine.reward(r, PART)


def joined(out: list[Outcome]) -> Joined:
    assert len(out) == 1 and isinstance(out[0], Joined), out
    return out[0]


def refused(out: list[Outcome]) -> Refused:
    assert len(out) == 1 and isinstance(out[0], Refused), out
    return out[0]


def refusals(out: list[Outcome]) -> list[tuple[str, Any]]:
    """(code, source) of every refusal among ``out``."""
    return [(o.code, o.source) for o in out if isinstance(o, Refused)]


def counters(state: DomainState) -> tuple[int, int, float, int]:
    """(decisions, rewards_joined, reward_sum, expired)."""
    return state.decisions, state.rewards_joined, state.reward_sum, state.expired


def buffered(state: DomainState) -> list[tuple[str, float]]:
    """What the domain will learn next: (event id, reward) in order."""
    return [(p.event_id, r) for p, r in state.buffer]


def baseline(engine: Engine, domain: str = DOMAIN) -> EpsilonGreedy:
    policy = engine.domains.states[domain].baseline
    assert isinstance(policy, EpsilonGreedy)
    return policy


# -- deciding ---------------------------------------------------------------------------------
def test_a_context_is_decided_with_the_probability_of_its_logged_distribution() -> None:
    """A new decision logs the whole distribution, the chosen action's entry of it as its
    probability, and a pending join stamped with the context's record time; a fresh engine
    with the same seed decides the same event identically."""
    engine = make_engine()
    d = decide(engine, ctx("e1"))
    dec = d.decision
    assert (dec.event_id, dec.domain) == ("e1", DOMAIN)
    assert list(dec.probabilities) == CANDS
    # An untrained epsilon-greedy ties every candidate: the distribution is uniform.
    assert list(dec.probabilities.values()) == pytest.approx([1 / 3] * 3, abs=1e-12)
    assert dec.action in CANDS
    assert dec.probability == dec.probabilities[dec.action]
    assert (dec.policy, dec.variant, dec.policy_version) == ("epsilon_greedy", "control", 0)
    assert dec.timestamp == NOW  # the wall clock of the turn
    p = d.pending
    assert (p.domain, p.event_id, p.chosen) == (DOMAIN, "e1", CANDS.index(dec.action))
    assert p.probability == dec.probability
    assert (p.decided_at, p.deadline) == (T0, T0 + WAIT)
    assert (DOMAIN, "e1") in engine.joins and len(engine.joins) == 1
    assert counters(d.state) == (1, 0, 0.0, 0)
    again = decide(make_engine(), ctx("e1"))
    assert again.decision == dec


def test_sampled_actions_follow_the_logged_distribution() -> None:
    """Over many events the served actions' frequencies match the logged probabilities
    (after training, epsilon 0.3 over 3 candidates logs 0.1 / 0.8 / 0.1): each count lies
    within 4 binomial standard deviations of n * p, for the fixed seeds used."""
    engine = make_engine()
    train = [ctx(f"train-{i}") for i in range(60)]
    for o in read_contexts(engine, train):
        assert isinstance(o, Decided)
        value = 1.0 if o.decision.action == "b" else 0.0
        joined(read_reward(engine, rew(o.event.event_id, value)))
    assert engine.learn(NOW, force=True) == 60

    n = 6000
    out = read_contexts(engine, [ctx(f"e{i}", T0 + 2.0) for i in range(n)])
    assert len(out) == n
    served: Counter[str] = Counter()
    for o in out:
        assert isinstance(o, Decided)
        dec = o.decision
        assert list(dec.probabilities.values()) == pytest.approx([0.1, 0.8, 0.1], abs=1e-12)
        assert dec.probability == dec.probabilities[dec.action]
        assert o.pending.probability == dec.probability
        assert o.pending.chosen == CANDS.index(dec.action)
        assert dec.policy_version == 60
        served[dec.action] += 1
    assert sum(served.values()) == n
    for action, p in zip(CANDS, (0.1, 0.8, 0.1), strict=True):
        bound = 4 * math.sqrt(n * p * (1 - p))
        assert abs(served[action] - n * p) <= bound, (action, served[action], n * p)


def test_many_domains_in_one_call_decide_as_each_alone() -> None:
    """Contexts of many domains decided together (one policy call per class) get exactly
    the decisions each domain gets alone, and each domain counts its own."""
    names = [f"d{i}" for i in range(6)]
    engine = make_engine()
    out = read_contexts(engine, [ctx(f"e{i}", domain=n) for i, n in enumerate(names)])
    assert [type(o) for o in out] == [Decided] * len(names)
    for i, (n, o) in enumerate(zip(names, out, strict=True)):
        assert isinstance(o, Decided) and o.state.name == n
        alone = decide(make_engine(), ctx(f"e{i}", domain=n))
        assert o.decision == alone.decision
        assert o.decision.probability == o.decision.probabilities[o.decision.action]
        assert counters(o.state) == (1, 0, 0.0, 0)
    assert len(engine.joins) == len(names)


# -- joining ----------------------------------------------------------------------------------
def test_a_reward_in_its_window_joins_the_decision_served_once() -> None:
    """A reward stamped within the window joins exactly the pending decision that was
    served (same action, same probability) and counts once; a second reward for the event is
    refused duplicate_reward and changes nothing."""
    engine = make_engine()
    d = decide(engine, ctx("e1"))
    state = d.state
    j = joined(read_reward(engine, rew("e1", 0.75, T0 + 3.0)))
    assert j.pending is d.pending
    assert CANDS[j.pending.chosen] == d.decision.action
    assert j.pending.probability == d.decision.probability
    assert (j.state, j.reward) == (state, 0.75)
    assert counters(state) == (1, 1, 0.75, 0)
    assert len(engine.joins) == 0
    assert buffered(state) == [("e1", 0.75)]

    dup = refused(read_reward(engine, rew("e1", 1.0, T0 + 4.0)))
    assert (dup.code, dup.source, dup.domain) == (DUPLICATE_REWARD, "rew:e1", DOMAIN)
    assert counters(state) == (1, 1, 0.75, 0)
    assert buffered(state) == [("e1", 0.75)]


def test_a_reward_for_an_unknown_event_is_refused_unknown_event() -> None:
    """Without an early wait, a reward no decision claims is refused unknown_event at once,
    labelled with its domain only when the domain is held here."""
    engine = make_engine()
    state = decide(engine, ctx("e1")).state
    known = refused(read_reward(engine, rew("nope")))
    assert (known.code, known.source, known.domain) == (UNKNOWN_EVENT, "rew:nope", DOMAIN)
    other = refused(read_reward(engine, rew("e1", domain="elsewhere")))
    assert (other.code, other.source, other.domain) == (UNKNOWN_EVENT, "rew:e1", None)
    assert counters(state) == (1, 0, 0.0, 0)
    assert (DOMAIN, "e1") in engine.joins and len(engine.joins.early) == 0


def test_the_window_includes_its_deadline() -> None:
    """A reward stamped exactly at the deadline joins; one stamped just after is late."""
    engine = make_engine()
    decide(engine, ctx("on"))
    decide(engine, ctx("after"))
    joined(read_reward(engine, rew("on", 1.0, T0 + WAIT)))
    late = refused(read_reward(engine, rew("after", 1.0, T0 + WAIT + 0.001)))
    assert late.code == EXPIRED_EVENT


def test_a_reward_stamped_past_the_deadline_is_late_even_when_read_at_once() -> None:
    """Time is the records' time: a reward stamped after the deadline is refused
    expired_event although the wall clock has not moved; it leaves the decision to expire
    with the default reward once stream time passes the deadline."""
    engine = make_engine()
    d = decide(engine, ctx("e1"))
    assert engine.now == NOW  # read in the very turn it was decided
    late = refused(read_reward(engine, rew("e1", 1.0, T0 + WAIT + 1.0)))
    assert (late.code, late.source, late.domain) == (EXPIRED_EVENT, "rew:e1", DOMAIN)
    assert counters(d.state) == (1, 0, 0.0, 0)
    assert (DOMAIN, "e1") in engine.joins  # not joined: it waits to expire
    (exp,) = engine.expire()  # the late reward moved stream time past the deadline
    assert isinstance(exp, Expired)
    assert (exp.pending, exp.reward, exp.evicted) == (d.pending, DEFAULT, False)
    assert counters(d.state) == (1, 0, 0.0, 1)
    assert buffered(d.state) == [("e1", DEFAULT)]


def test_a_reward_read_long_after_but_stamped_in_its_window_joins() -> None:
    """A reward read a month later in wall time (downtime, lag) still joins when its record
    is stamped within the window: the wall clock never closes a window."""
    engine = make_engine()
    d = decide(engine, ctx("e1"))
    engine.now = NOW + 30 * 86_400.0
    assert engine.expire() == []
    j = joined(read_reward(engine, rew("e1", 1.0, T0 + WAIT - 1.0)))
    assert j.pending is d.pending
    assert counters(d.state) == (1, 1, 1.0, 0)


def test_a_reward_stamped_before_its_context_still_joins() -> None:
    """The window ends at the deadline; a reward stamped before its context's record (clock
    skew between producers) is in time."""
    engine = make_engine()
    decide(engine, ctx("e1", T0))
    assert joined(read_reward(engine, rew("e1", 1.0, T0 - 5.0))).reward == 1.0


def test_a_late_reward_does_not_spoil_a_reward_in_time() -> None:
    """Only a reward in time joins: a late one is refused, and a later-read reward stamped
    in the window still joins the decision."""
    engine = make_engine()
    decide(engine, ctx("e1"))
    late = engine.reward(rew("e1", 1.0, T0 + WAIT + 5.0), PART)  # stream time not advanced
    assert refused(late).code == EXPIRED_EVENT
    assert joined(engine.reward(rew("e1", 0.5, T0 + 2.0), PART)).reward == 0.5


# -- expiry -----------------------------------------------------------------------------------
def test_decisions_expire_once_stream_time_passes_their_deadline() -> None:
    """expire() closes exactly the windows the rewards partition's stream time has passed,
    in deadline order, each learning the default reward once; the pending join is gone and
    a reward for it, even stamped in its window, is then expired_event."""
    engine = make_engine()
    first = decide(engine, ctx("e1", T0))
    decide(engine, ctx("e2", T0 + 5.0))
    state = first.state
    engine.clock.read(False, PART, T0 + WAIT)  # at the deadline: a reward may still come
    assert engine.expire() == []
    engine.clock.read(False, PART, T0 + WAIT + 0.5)
    (exp,) = engine.expire()
    assert isinstance(exp, Expired)
    assert (exp.state, exp.pending, exp.reward, exp.evicted) == (
        state,
        first.pending,
        DEFAULT,
        False,
    )
    assert (DOMAIN, "e1") not in engine.joins and (DOMAIN, "e2") in engine.joins
    assert counters(state) == (2, 0, 0.0, 1)
    assert engine.expire() == []  # expired once
    late = refused(engine.reward(rew("e1", 1.0, T0 + 2.0), PART))
    assert (late.code, late.domain) == (EXPIRED_EVENT, DOMAIN)
    assert buffered(state) == [("e1", DEFAULT)]
    assert engine.learn(NOW, force=True) == 1
    assert baseline(engine).n_learned == 1


def test_the_grace_delays_expiry_by_that_much_stream_time() -> None:
    """With RL_REWARD_GRACE_S a window closes only once stream time is past deadline +
    grace (rewards out of timestamp order)."""
    engine = make_engine(reward_grace_s=5.0)
    decide(engine, ctx("e1"))
    engine.clock.read(False, PART, T0 + WAIT + 5.0)
    assert engine.expire() == []
    engine.clock.read(False, PART, T0 + WAIT + 5.5)
    assert [type(o) for o in engine.expire()] == [Expired]


def test_without_a_default_reward_an_expired_decision_learns_nothing() -> None:
    """RL_DEFAULT_REWARD=none: the decision still expires (and counts), learning nothing."""
    engine = make_engine(default_reward=None)
    d = decide(engine, ctx("e1"))
    engine.clock.read(False, PART, T0 + WAIT + 1.0)
    (exp,) = engine.expire()
    assert isinstance(exp, Expired) and exp.reward is None and exp.pending is d.pending
    assert counters(d.state) == (1, 0, 0.0, 1)
    assert buffered(d.state) == []
    assert engine.learn(NOW, force=True) == 0
    assert baseline(engine).n_learned == 0


# -- early rewards ----------------------------------------------------------------------------
def test_an_early_reward_is_held_then_joins_its_context() -> None:
    """A reward read before its context is held; the context's new decision claims it
    (claim_early) and it joins that decision, once."""
    engine = make_engine(reward_early_wait_s=30.0)
    r = rew("e1", 0.75, T0 + 1.0)
    assert read_reward(engine, r) == [Held(r)]
    assert len(engine.joins.early) == 1 and len(engine.joins) == 0
    out = engine.decide([(DOMAIN, [ctx("e1", T0)], PART)])
    (d,) = out
    assert isinstance(d, Decided)
    j = joined(engine.claim_early(d))
    assert (j.pending, j.reward) == (d.pending, 0.75)
    assert counters(d.state) == (1, 1, 0.75, 0)
    assert len(engine.joins.early) == 0 and len(engine.joins) == 0
    assert engine.claim_early(d) == []  # claimed once
    assert refused(read_reward(engine, rew("e1", 1.0, T0 + 2.0))).code == DUPLICATE_REWARD


def test_an_early_reward_is_judged_against_its_contexts_window() -> None:
    """A held reward stamped after its context's deadline is late when the context comes:
    refused expired_event, and the decision waits to expire."""
    engine = make_engine(reward_early_wait_s=30.0)
    r = rew("e1", 1.0, T0 + WAIT + 1.0)
    assert read_reward(engine, r) == [Held(r)]
    out = engine.decide([(DOMAIN, [ctx("e1", T0)], PART)])
    (d,) = out
    assert isinstance(d, Decided)
    late = refused(engine.claim_early(d))
    assert (late.code, late.source, late.domain) == (EXPIRED_EVENT, "rew:e1", DOMAIN)
    assert counters(d.state) == (1, 0, 0.0, 0)
    assert (DOMAIN, "e1") in engine.joins and len(engine.joins.early) == 0


def test_an_early_reward_whose_context_never_comes_is_unknown() -> None:
    """A held reward is given up on (unknown_event, its source kept) once its contexts
    partition's stream time is past its record time + RL_REWARD_EARLY_WAIT_S."""
    engine = make_engine(reward_early_wait_s=30.0)
    r = rew("e1", 1.0, T0)
    assert read_reward(engine, r) == [Held(r)]
    engine.clock.read(True, PART, T0 + 30.0)
    assert engine.expire() == []
    engine.clock.read(True, PART, T0 + 30.5)
    gone = refused(engine.expire())
    assert (gone.code, gone.source, gone.domain) == (UNKNOWN_EVENT, "rew:e1", None)
    assert len(engine.joins.early) == 0
    assert engine.domains.states == {}


def test_an_early_reward_in_time_joins_whatever_was_held_before_it() -> None:
    """Read order never decides a join: a reward stamped within the window joins its
    decision even when a late reward for the event was read (and held) before it, as it does
    when both are read after the context (test_a_late_reward_does_not_spoil_a_reward_in_time);
    the late one is refused expired_event."""
    engine = make_engine(reward_early_wait_s=30.0)
    late = rew("e1", 0.0, T0 + WAIT + 1.0, source="late")  # after the context's deadline
    in_time = rew("e1", 1.0, T0 + 2.0, source="in-time")
    out = read_reward(engine, late) + read_reward(engine, in_time)
    out += read_contexts(engine, [ctx("e1", T0)])
    assert [o.reward for o in out if isinstance(o, Joined)] == [1.0], out
    assert refusals(out) == [(EXPIRED_EVENT, "late")]
    assert counters(engine.domains.states[DOMAIN]) == (1, 1, 1.0, 0)


def test_a_second_early_reward_for_the_same_event_is_a_duplicate_reward() -> None:
    """Two rewards read before their context: the first joins; the second is a second
    reward for that decision (docs/events.md: duplicate_reward, as when both are read after
    the context), not one whose context never came (unknown_event)."""
    engine = make_engine(reward_early_wait_s=30.0)
    first = rew("e1", 1.0, T0 + 1.0, source="first")
    out = read_reward(engine, first) + read_reward(engine, rew("e1", 0.0, T0 + 2.0, source="2nd"))
    out += read_contexts(engine, [ctx("e1", T0)])
    assert [o.reward for o in out if isinstance(o, Joined)] == [1.0], out
    assert refusals(out) == [(DUPLICATE_REWARD, "2nd")]
    assert counters(engine.domains.states[DOMAIN]) == (1, 1, 1.0, 0)


# -- duplicate contexts -----------------------------------------------------------------------
def test_an_event_id_decided_again_is_refused_duplicate_event() -> None:
    """The same event id twice in a batch, again while pending, and again after its reward
    (even past the window) is refused duplicate_event; only the first is decided."""
    engine = make_engine()
    out = read_contexts(engine, [ctx("e1"), ctx("e1", T0 + 0.1)])
    assert [type(o) for o in sorted(out, key=lambda o: type(o).__name__)] == [Decided, Refused]
    dup = next(o for o in out if isinstance(o, Refused))
    assert (dup.code, dup.source, dup.domain) == (DUPLICATE_EVENT, "ctx:e1", DOMAIN)
    pending = refused(read_contexts(engine, [ctx("e1", T0 + 1.0)]))
    assert pending.code == DUPLICATE_EVENT
    joined(read_reward(engine, rew("e1", 1.0, T0 + 2.0)))
    after = refused(read_contexts(engine, [ctx("e1", T0 + 10 * WAIT)]))
    assert (after.code, after.domain) == (DUPLICATE_EVENT, DOMAIN)
    assert counters(engine.domains.states[DOMAIN]) == (1, 1, 1.0, 0)


def test_an_expired_event_id_is_a_duplicate_within_its_window_and_new_after() -> None:
    """A context re-sent after its decision expired is a duplicate while stamped within the
    old window; stamped after it, the id is a new decision with its own window."""
    engine = make_engine()
    decide(engine, ctx("e1", T0))
    (shed,) = engine.shed(1.0)  # expired early: its window is still open in stream time
    assert isinstance(shed, Expired) and shed.evicted
    within = refused(read_contexts(engine, [ctx("e1", T0 + WAIT)]))
    assert within.code == DUPLICATE_EVENT
    fresh = decide(engine, ctx("e1", T0 + WAIT + 0.5))
    assert (fresh.pending.decided_at, fresh.pending.deadline) == (
        T0 + WAIT + 0.5,
        T0 + 2 * WAIT + 0.5,
    )
    assert joined(read_reward(engine, rew("e1", 1.0, T0 + WAIT + 1.0))).pending is fresh.pending
    assert counters(fresh.state) == (2, 1, 1.0, 1)


@pytest.mark.parametrize("how", ["withdraw", "undeliverable"])
def test_a_decision_never_published_leaves_no_memory(how: str) -> None:
    """A withdrawn (or undeliverable) decision is forgotten: no reward joins it, nothing
    expires for it, and its event id may be decided again."""
    engine = make_engine()
    d = decide(engine, ctx("e1"))
    if how == "withdraw":
        engine.withdraw(d)
    else:
        engine.undeliverable(DOMAIN, "e1")
    assert len(engine.joins) == 0
    assert refused(read_reward(engine, rew("e1"))).code == UNKNOWN_EVENT
    engine.clock.read(False, PART, T0 + 2 * WAIT)
    assert engine.expire() == []
    again = decide(engine, ctx("e1", T0 + 1.0))
    assert again.decision.action == d.decision.action  # the same event's draw
    assert counters(again.state) == (2, 0, 0.0, 0)


# -- replays ----------------------------------------------------------------------------------
def published_as(decision: Decision | None, calls: list[str] | None = None) -> Published:
    def published(state: DomainState, ev: ContextEvent) -> Decision | None:
        if calls is not None:
            calls.append(f"{state.name}/{ev.event_id}")
        return decision

    return published


def test_a_replayed_context_gets_its_published_decision_back() -> None:
    """A replayed context whose decision is already on the decisions topic is not sampled
    again: it is Republished with that decision's action, probability, policy and version,
    and a reward joins that decision."""
    fresh = decide(make_engine(), ctx("r1")).decision.action  # what a new sample would be
    action = next(a for a in CANDS if a != fresh)
    probs = {"a": 0.2, "b": 0.5, "c": 0.3}
    dec = Decision(
        "r1", DOMAIN, action, probs[action], probs, "epsilon_greedy", 7, "control", 0.0, 0.0
    )
    engine = make_engine()
    calls: list[str] = []
    (o,) = read_contexts(engine, [ctx("r1")], published_as(dec, calls))
    assert calls == [f"{DOMAIN}/r1"]
    assert isinstance(o, Republished)
    p = o.pending
    assert CANDS[p.chosen] == action and p.probability == probs[action]
    assert (p.policy, p.variant, p.policy_version) == ("epsilon_greedy", "control", 7)
    assert (p.decided_at, p.deadline) == (T0, T0 + WAIT)
    assert counters(o.state) == (1, 0, 0.0, 0)
    j = joined(read_reward(engine, rew("r1", 1.0)))
    assert j.pending is p
    assert refused(read_contexts(engine, [ctx("r1")], published_as(dec))).code == DUPLICATE_EVENT


def test_a_decision_published_before_a_restart_is_served_again_and_joins_its_early_reward() -> None:
    """After a restart the replay reads the reward first (held) and then the context: the
    context gets the decision published before the restart, and the held reward joins it in
    the same call."""
    before = decide(make_engine(), ctx("e1")).decision
    engine = make_engine(reward_early_wait_s=30.0)
    r = rew("e1", 0.5, T0 + 1.0)
    assert read_reward(engine, r) == [Held(r)]
    out = engine.decide([(DOMAIN, [ctx("e1")], PART)], published_as(before))
    assert [type(o) for o in out] == [Republished, Joined]
    rep, j = out
    assert isinstance(rep, Republished) and isinstance(j, Joined)
    assert CANDS[rep.pending.chosen] == before.action
    assert rep.pending.probability == before.probability
    assert (j.pending, j.reward) == (rep.pending, 0.5)
    assert counters(rep.state) == (1, 1, 0.5, 0)


def unfit(event_id: str, domain: str, action: str, order: str) -> Decision:
    """A published decision for ``event_id`` of ``domain``, over candidates in ``order``."""
    probs = {a: 0.5 if a == "a" else 0.25 for a in order}
    p = probs.get(action, 0.5)
    return Decision(event_id, domain, action, p, probs, "p", 0, "control", 0, 0)


@pytest.mark.parametrize(
    "decision",
    [
        None,
        unfit("other", DOMAIN, "a", "abc"),
        unfit("r1", "elsewhere", "a", "abc"),
        unfit("r1", DOMAIN, "z", "abc"),
        unfit("r1", DOMAIN, "a", "bac"),
    ],
    ids=["none", "other-event", "other-domain", "action-not-a-candidate", "other-candidates"],
)
def test_a_replay_whose_published_decision_does_not_fit_is_decided_anew(
    decision: Decision | None,
) -> None:
    """No published decision, or one for another event, domain or candidate list: the
    context is decided as new, exactly as without a replay."""
    expected = decide(make_engine(), ctx("r1")).decision
    (o,) = read_contexts(make_engine(), [ctx("r1")], published_as(decision))
    assert isinstance(o, Decided)
    assert o.decision == expected


# -- learning ---------------------------------------------------------------------------------
def test_learning_takes_each_joined_reward_exactly_once() -> None:
    """learn() learns the joined rewards and nothing else (duplicates, late and unknown
    rewards are not learned), each once: n_learned and the per-action counts are the joined
    decisions', and the next decision carries the new policy version."""
    engine = make_engine(default_reward=None)
    ds = [decide(engine, ctx(f"e{i}")) for i in range(6)]
    joined(read_reward(engine, rew("e0", 1.0)))
    joined(read_reward(engine, rew("e1", 0.0)))
    joined(read_reward(engine, rew("e2", 1.0)))
    assert refused(read_reward(engine, rew("e2", 0.0))).code == DUPLICATE_REWARD
    assert refused(read_reward(engine, rew("e3", 1.0, T0 + WAIT + 1.0))).code == EXPIRED_EVENT
    assert refused(read_reward(engine, rew("zz", 1.0))).code == UNKNOWN_EVENT
    state = ds[0].state
    assert buffered(state) == [("e0", 1.0), ("e1", 0.0), ("e2", 1.0)]
    assert counters(state) == (6, 3, 2.0, 0)
    assert engine.learn(NOW) == 0  # neither full nor old enough
    assert engine.learn(NOW, force=True) == 3
    policy = baseline(engine)
    assert policy.n_learned == 3
    assert policy.action_counts == dict(Counter(d.decision.action for d in ds[:3]))
    assert engine.learn(NOW, force=True) == 0
    assert policy.n_learned == 3 and state.buffer == []
    assert decide(engine, ctx("next", T0 + 2.0)).decision.policy_version == 3


def test_learning_follows_the_update_cadence_once_per_reward() -> None:
    """RL_UPDATE_INTERVAL rewards learn at once; fewer wait RL_UPDATE_MAX_DELAY_S of the
    turn's wall clock; a buffer both full and old is learned once."""
    engine = make_engine(update_interval=2, update_max_delay_s=5.0)
    for i in range(5):
        decide(engine, ctx(f"e{i}"))
    joined(read_reward(engine, rew("e0")))
    assert engine.learn(NOW) == 0
    joined(read_reward(engine, rew("e1")))
    assert engine.learn(NOW + 10.0) == 2  # full and old
    assert baseline(engine).n_learned == 2
    joined(read_reward(engine, rew("e2")))
    assert engine.learn(NOW + 4.9) == 0
    assert engine.learn(NOW + 5.0) == 1
    assert baseline(engine).n_learned == 3


# -- bounds -----------------------------------------------------------------------------------
def test_the_pending_cap_expires_the_oldest_decision_early() -> None:
    """At RL_MAX_PENDING a new decision pushes out the oldest pending one: Expired (evicted,
    learning the default reward) in the same outcomes, before the new Decided; a reward for
    it is then expired_event."""
    engine = make_engine(max_pending=3)
    ds = [decide(engine, ctx(f"e{i}", T0 + i)) for i in range(3)]
    out = read_contexts(engine, [ctx("e3", T0 + 3)])
    assert [type(o) for o in out] == [Expired, Decided]
    exp = out[0]
    assert isinstance(exp, Expired)
    assert (exp.pending, exp.reward, exp.evicted) == (ds[0].pending, DEFAULT, True)
    assert len(engine.joins) == 3 and (DOMAIN, "e0") not in engine.joins
    assert refused(read_reward(engine, rew("e0", 1.0, T0 + 1.0))).code == EXPIRED_EVENT
    joined(read_reward(engine, rew("e1", 1.0, T0 + 1.0)))
    assert counters(ds[0].state) == (4, 1, 1.0, 1)
    assert buffered(ds[0].state) == [("e0", DEFAULT), ("e1", 1.0)]


def test_at_the_total_cap_the_busiest_domain_gives_up_its_own_oldest() -> None:
    """When RL_MAX_PENDING is reached, even by a quiet domain's decision, the fullest
    domain's oldest decision is evicted: a busy domain never evicts a quiet one's."""
    engine = make_engine(max_pending=4)
    decide(engine, ctx("q0", T0, domain="quiet"))
    busy = [decide(engine, ctx(f"b{i}", T0 + i, domain="busy")) for i in range(3)]
    out = read_contexts(engine, [ctx("q1", T0 + 4, domain="quiet")])
    assert [type(o) for o in out] == [Expired, Decided]
    assert isinstance(out[0], Expired) and out[0].pending is busy[0].pending
    assert ("quiet", "q0") in engine.joins and ("quiet", "q1") in engine.joins
    assert engine.joins.count_by_domain() == {"quiet": 2, "busy": 2}
    assert engine.domains.states["quiet"].expired == 0
    assert engine.domains.states["busy"].expired == 1


def test_the_per_domain_cap_evicts_the_domains_own_oldest() -> None:
    """RL_MAX_PENDING_PER_DOMAIN: a domain at its bound gives up its own oldest decision."""
    engine = make_engine(max_pending_per_domain=2)
    first = decide(engine, ctx("e0", T0))
    decide(engine, ctx("e1", T0 + 1))
    decide(engine, ctx("o0", T0, domain="other"))
    out = read_contexts(engine, [ctx("e2", T0 + 2)])
    assert [type(o) for o in out] == [Expired, Decided]
    assert isinstance(out[0], Expired) and out[0].pending is first.pending
    assert engine.joins.count_by_domain() == {DOMAIN: 2, "other": 1}


def test_held_early_rewards_are_bounded_the_oldest_given_up() -> None:
    """Early rewards are bounded by RL_MAX_PENDING too: the oldest held one is given up on
    (unknown_event) for the new one."""
    engine = make_engine(max_pending=2, reward_early_wait_s=30.0)
    r0, r1, r2 = rew("e0", t=T0), rew("e1", t=T0 + 1), rew("e2", t=T0 + 2)
    assert read_reward(engine, r0) == [Held(r0)]
    assert read_reward(engine, r1) == [Held(r1)]
    out = read_reward(engine, r2)
    assert len(out) == 2 and out[1] == Held(r2)
    gone = out[0]
    assert isinstance(gone, Refused)
    assert (gone.code, gone.source) == (UNKNOWN_EVENT, "rew:e0")
    assert sorted(e.event_id for e in engine.joins.early.items()) == ["e1", "e2"]


def test_shed_expires_the_oldest_share_of_the_pending_decisions() -> None:
    """Memory pressure: shed(share) expires the oldest share of the pending decisions at
    once (evicted, learning the default); the rest still join."""
    engine = make_engine()
    ds = [decide(engine, ctx(f"e{i}", T0 + i)) for i in range(4)]
    out = engine.shed(0.5)
    assert [o.pending for o in out if isinstance(o, Expired)] == [ds[0].pending, ds[1].pending]
    assert all(isinstance(o, Expired) and o.evicted and o.reward == DEFAULT for o in out)
    assert len(out) == 2 and len(engine.joins) == 2
    assert refused(read_reward(engine, rew("e0", 1.0, T0 + 5))).code == EXPIRED_EVENT
    joined(read_reward(engine, rew("e3", 1.0, T0 + 5)))
    assert counters(ds[0].state) == (4, 1, 1.0, 2)


def test_a_new_domain_beyond_the_domain_limit_is_refused() -> None:
    """RL_MAX_DOMAINS: the contexts of a domain beyond it, and rewards of one with no
    decisions, are refused domain_limit; the held domain goes on."""
    engine = make_engine(max_domains=1, reward_early_wait_s=30.0)
    decide(engine, ctx("e1"))
    out = refused(read_contexts(engine, [ctx("e1", domain="other")]))
    assert (out.code, out.source, out.domain) == (DOMAIN_LIMIT, "ctx:e1", None)
    held = refused(read_reward(engine, rew("e9", domain="other")))
    assert held.code == DOMAIN_LIMIT
    assert set(engine.domains.states) == {DOMAIN} and len(engine.joins.early) == 0
    decide(engine, ctx("e2"))


def test_a_context_beyond_the_action_limit_is_refused() -> None:
    """RL_MAX_ACTIONS: a context whose new candidates would take its domain past the limit
    is refused action_limit; known candidates are still decided."""
    engine = make_engine(max_actions=3)
    decide(engine, ctx("e1"))
    out = refused(read_contexts(engine, [ctx("e2", candidates=["a", "b", "d"])]))
    assert (out.code, out.source) == (ACTION_LIMIT, "ctx:e2")
    assert engine.domains.states[DOMAIN].actions == set(CANDS)
    decide(engine, ctx("e3", candidates=["c", "a"]))

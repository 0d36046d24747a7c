"""Decide -> pending -> join -> learn, exactly once: decoded contexts and rewards in,
outcomes out (:mod:`stream.core.outcomes`).

The one owner of a domain's state on the way: admission (the domain limit, duplicates, the
action limit), deciding (many domains in one policy call per class), serving a replayed
context the decision already published, the pending joins and their windows in stream
time, early rewards, learning on the update cadence, and every counter of a domain. Its
callers — the Kafka processor, the in-process Bandit, the HTTP endpoints — publish what it
decides and translate its outcomes; none of them changes a domain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from policies.features import FeatureHasher
from stream.config import Settings
from stream.core.domain import DomainState
from stream.core.domains import Domains, Served
from stream.core.events import ContextEvent, Decision, RewardEvent
from stream.core.join import Outcome as Take
from stream.core.join import Pending, PendingJoins
from stream.core.learner import LearnError
from stream.core.outcomes import (
    ACTION_LIMIT,
    DOMAIN_LIMIT,
    DUPLICATE_EVENT,
    DUPLICATE_REWARD,
    EXPIRED_EVENT,
    UNKNOWN_EVENT,
    Decided,
    Expired,
    Failed,
    Held,
    Joined,
    Outcome,
    Refused,
    Republished,
)
from stream.core.streamtime import StreamTime
from stream.errorpolicy import ProcessingErrors
from stream.failpoints import Failpoints
from stream.failpoints import check as failpoint
from stream.logs import RateLimitedLog

log = RateLimitedLog(logging.getLogger(__name__))

# A replayed context's decision already on the decisions topic, if any.
Published = Callable[[DomainState, ContextEvent], Decision | None]
# What a held early reward keeps of its source until it is claimed or given up on.
Keep = Callable[[RewardEvent], Any]


class Engine:
    def __init__(
        self,
        settings: Settings,
        hasher: FeatureHasher,
        failpoints: Failpoints | None = None,
        errors: ProcessingErrors | None = None,
        on_learn_error: LearnError | None = None,
        clock: StreamTime | None = None,
        keep: Keep | None = None,
    ) -> None:
        s = self.settings = settings
        self.hasher = hasher
        self.failpoints = failpoints
        # Unexpected exceptions while deciding: raised (fail) or isolated (dead_letter).
        self.errors = errors or ProcessingErrors(s.on_processing_error, s.max_processing_errors)
        self.domains = Domains(s, hasher, failpoints, on_learn_error)
        self.learner = self.domains.learner
        waits = (s.reward_wait_s, None, s.reward_early_wait_s, s.max_pending_per_domain)
        self.joins = PendingJoins(s.max_pending, *waits)
        self.clock = clock or StreamTime(s.reward_grace_s, s.reward_quiet_grace_s)
        # What a held early reward keeps of its source (its caller's choice).
        self.keep: Keep = keep or (lambda r: r.source)
        self.keep_distribution = False  # each pending decision keeps its distribution
        self.now = time.time()  # the wall clock of the turn: learning's cadence runs on it

    # -- contexts -----------------------------------------------------------------------
    def decide(
        self,
        batches: list[tuple[str, list[ContextEvent], int]],
        published: Published | None = None,
    ) -> list[Outcome]:
        """Each (domain, its contexts, their input partition): refusals, contexts served
        their ``published`` decision again, and new decisions (:class:`Decided`, to be
        published, then passed to :meth:`claim_early`)."""
        out: list[Outcome] = []
        admitted: list[tuple[DomainState, list[ContextEvent]]] = []
        for domain, events, partition in batches:
            state, fresh = self._admit(domain, events, partition, out)
            if state is not None and published is not None:
                fresh = [ev for ev in fresh if not self._again(state, ev, published, out)]
            if state is not None and fresh:
                admitted.append((state, fresh))
        for (state, _), served in zip(admitted, self._decide(admitted, out), strict=True):
            for share in served:
                self._decided(state, share, out)
        return out

    def _admit(
        self, domain: str, events: list[ContextEvent], partition: int, out: list[Outcome]
    ) -> tuple[DomainState | None, list[ContextEvent]]:
        """The domain (within RL_MAX_DOMAINS) and those of its contexts that may be
        decided: an event id neither pending nor decided within its window, its candidates
        within RL_MAX_ACTIONS. The others are refused."""
        state = self.domains.get_or_create(domain, partition)
        if state is None:
            limit = self.settings.max_domains
            reason = f"domain {domain!r} would exceed RL_MAX_DOMAINS={limit}"
            out.extend(Refused(DOMAIN_LIMIT, reason, ev.source) for ev in events)
            return None, []
        fresh: list[ContextEvent] = []
        seen: set[str] = set()
        max_actions, actions, joins = self.settings.max_actions, state.actions, self.joins
        for ev in events:
            eid = ev.event_id
            if eid in seen or (domain, eid) in joins:
                reason = f"event_id {eid!r} is already pending"
                out.append(Refused(DUPLICATE_EVENT, reason, ev.source, domain))
                continue
            if joins.finished and joins.was_decided(domain, eid, ev.record_time):
                reason = f"event_id {eid!r} was already decided"
                out.append(Refused(DUPLICATE_EVENT, reason, ev.source, domain))
                continue
            if not actions.issuperset(ev.candidates):  # the common case: no new action
                new = [c for c in ev.candidates if c not in actions]
                if len(actions) + len(new) > max_actions:
                    reason = f"domain {domain!r} would exceed RL_MAX_ACTIONS={max_actions} "
                    out.append(Refused(ACTION_LIMIT, reason + "distinct actions", ev.source))
                    continue
                actions.update(new)
            seen.add(eid)
            fresh.append(ev)
        return state, fresh

    def _again(
        self, state: DomainState, ev: ContextEvent, published: Published, out: list[Outcome]
    ) -> bool:
        """Serve a replayed context the decision already published for it; False when
        there is none, or it does not fit (then it is decided anew)."""
        dec = published(state, ev)
        cands = ev.candidates
        if dec is None or (dec.domain, dec.event_id) != (state.name, ev.event_id):
            return False
        if dec.action not in cands or list(dec.probabilities) != cands:
            return False
        encoded = self.hasher.encode(ev.context, cands, ev.candidate_features, state.index)
        dist = tuple(dec.probabilities.values()) if self.keep_distribution else None
        at = ev.record_time
        pending = Pending(
            state.name,
            ev.event_id,
            encoded,
            cands.index(dec.action),
            dec.probability,
            dec.policy,
            dec.variant,
            at,
            at + self.settings.reward_wait_s,
            dist,
            dec.policy_version,
        )
        state.decisions += 1
        self._await(state, pending, out)
        out.append(Republished(state, ev, pending))
        out.extend(self._claim(state, ev.event_id))
        return True

    def _decide(
        self, admitted: list[tuple[DomainState, list[ContextEvent]]], out: list[Outcome]
    ) -> list[list[Served]]:
        """Every domain's decisions, in one call per policy class; a domain whose decide
        raises is decided event by event (:meth:`_decide_each`)."""
        served: list[list[Served] | None] = [None] * len(admitted)
        together = []
        for i, (state, fresh) in enumerate(admitted):
            try:
                failpoint(self.failpoints, "decide")
                together.append(i)
            except Exception as exc:
                served[i] = self._decide_each(state, fresh, exc, out)
        try:
            many = self.domains.decide_many([admitted[i] for i in together])
            for i, shares in zip(together, many, strict=True):
                served[i] = shares
        except Exception:
            for i in together:  # find the domain that raised; the others decide as usual
                state, fresh = admitted[i]
                try:
                    served[i] = self.domains.decide(state, fresh)
                except Exception as exc:
                    served[i] = self._decide_each(state, fresh, exc, out)
        return [shares or [] for shares in served]

    def _decide_each(
        self, state: DomainState, events: list[ContextEvent], exc: Exception, out: list[Outcome]
    ) -> list[Served]:
        """A batch's decide raised: under ``dead_letter``, decide its events one by one;
        those that raise again fail (under ``fail`` the error propagates). Only those count
        against RL_MAX_PROCESSING_ERRORS, not the batch's error too."""
        self.errors.handle(exc, count=False)
        log.warning(
            "decide_batch",
            "deciding %d contexts of %r failed (%s: %s): deciding them one by one",
            len(events),
            state.name,
            type(exc).__name__,
            exc,
        )
        served: list[Served] = []
        for ev in events:
            try:
                failpoint(self.failpoints, "decide")
                served.extend(self.domains.decide(state, [ev]))
            except Exception as again:
                self.errors.handle(again)
                out.append(Failed(again, ev.source))
        return served

    def _decided(self, state: DomainState, served: Served, out: list[Outcome]) -> None:
        events, encoded, dec = served.events, served.encoded, served.decisions
        variant, policy = served.variant, served.policy
        name, policy_name, version = state.name, policy.name, policy.n_learned
        pmf, rows, probs = dec.pmf.tolist(), dec.row.tolist(), dec.probability.tolist()
        keep, wait, now = self.keep_distribution, self.settings.reward_wait_s, self.now
        end = 0
        for i, ev in enumerate(events):
            start, cands = end, ev.candidates
            end = start + len(cands)
            chosen = rows[i] - start
            dist = pmf[start:end]
            at = ev.record_time
            pending = Pending(
                name,
                ev.event_id,
                encoded[i],
                chosen,
                probs[i],
                policy_name,
                variant,
                at,
                at + wait,
                tuple(dist) if keep else None,
                version,
            )
            decision = Decision(
                ev.event_id,
                name,
                cands[chosen],
                probs[i],
                dict(zip(cands, dist, strict=False)),  # equal lengths: rows start:end
                policy_name,
                version,
                variant,
                now,
                0.0,
            )
            # Pending first: a decision its caller cannot publish is withdrawn again.
            self._await(state, pending, out)
            out.append(Decided(state, ev, pending, decision))

    def claim_early(self, decided: Decided) -> list[Outcome]:
        """A decision was published: a reward that came before it joins it now."""
        return self._claim(decided.state, decided.event.event_id)

    def withdraw(self, decided: Decided) -> None:
        """A decision its caller could not publish: no reward can come for it."""
        self.joins.discard(decided.state.name, decided.event.event_id)

    def undeliverable(self, domain: str, event_id: str) -> None:
        """A published decision the topic refused for good: forgotten (no reward comes)."""
        self.joins.discard(domain, event_id)

    def _await(self, state: DomainState, pending: Pending, out: list[Outcome]) -> None:
        evicted = self.joins.add(pending, state.partition)
        if evicted:
            out.extend(self._default(evicted, evicted=True))

    def _claim(self, state: DomainState, event_id: str) -> list[Outcome]:
        out: list[Outcome] = []
        for early in self.joins.early.claim(state.name, event_id, state.partition):
            r = RewardEvent(event_id, state.name, early.reward, source=early.source)
            r.record_time = early.timestamp
            out += self.reward(r, early.partition)
        return out

    # -- rewards ------------------------------------------------------------------------
    def reward(self, r: RewardEvent, partition: int) -> list[Outcome]:
        """Join ``r`` to its decision, or hold it for a context yet to come, or refuse it."""
        take, pending = self.joins.take(r.domain, r.event_id, r.record_time)
        if take is Take.JOINED:
            assert pending is not None
            state = self.domains.states[pending.domain]
            state.rewards_joined += 1
            state.reward_sum += r.reward
            self.learner.add(state, pending, r.reward, self.now)
            return [Joined(state, pending, r.reward)]
        held = r.domain if r.domain in self.domains.states else None  # metrics labels
        if take is Take.DUPLICATE:
            reason = f"event {r.event_id!r} already has its reward"
            return [Refused(DUPLICATE_REWARD, reason, r.source, held)]
        if take is Take.LATE:
            reason = f"event {r.event_id!r}'s reward window closed"
            return [Refused(EXPIRED_EVENT, reason, r.source, held)]
        source = self.keep(r)
        if self._domain_limit_reached(r.domain):
            reason = (
                f"a reward for {r.domain!r}, a domain without decisions, would exceed "
                f"RL_MAX_DOMAINS={self.settings.max_domains}"
            )
            return [Refused(DOMAIN_LIMIT, reason, source)]
        kept, dropped = self.joins.early.hold(
            r.domain, r.event_id, r.reward, r.record_time, partition, source
        )
        out: list[Outcome] = [self._unknown(e.domain, e.event_id, e.source) for e in dropped]
        out.append(Held(r) if kept else self._unknown(r.domain, r.event_id, source))
        return out

    def _domain_limit_reached(self, domain: str) -> bool:
        """Whether holding a reward for ``domain`` (no policy yet) would take the domains
        held, with decisions or rewards only, past RL_MAX_DOMAINS."""
        states = self.domains.states
        if domain in states:
            return False
        early = self.joins.early.domains()
        if domain in early:
            return False
        return len(states) + len(early - states.keys()) >= self.settings.max_domains

    def _unknown(self, domain: str, event_id: str, source: Any) -> Refused:
        """A reward no decision claimed (within RL_REWARD_EARLY_WAIT_S)."""
        held = domain if domain in self.domains.states else None
        reason = f"no decision for event {event_id!r} in {domain!r}"
        return Refused(UNKNOWN_EVENT, reason, source, held)

    # -- time ---------------------------------------------------------------------------
    def expire(self) -> list[Outcome]:
        """Close the windows stream time has passed (:mod:`stream.core.streamtime`): early
        rewards whose context cannot come any more, decisions without a reward."""
        out: list[Outcome] = []
        joins, clock = self.joins, self.clock
        if len(joins.early):
            until = clock.contexts_until(joins.early.partitions())
            gone = joins.early.expire(until)
            out.extend(self._unknown(e.domain, e.event_id, e.source) for e in gone)
        if len(joins):
            out.extend(self._default(joins.expire(clock.rewards_until(joins.partitions()))))
        return out

    def shed(self, share: float) -> list[Outcome]:
        """Memory pressure: the oldest ``share`` of the pending decisions expire now,
        learned with RL_DEFAULT_REWARD as if their window had closed."""
        self.now = time.time()
        return self._default(self.joins.shed(share), evicted=True)

    def _default(self, items: list[Pending], evicted: bool = False) -> list[Outcome]:
        """Decisions whose window closed: learn the default reward, or nothing if 'none'."""
        default = self.settings.default_reward
        out: list[Outcome] = []
        for p in items:
            state = self.domains.states.get(p.domain)
            if state is None:
                continue
            state.expired += 1
            if default is not None:
                self.learner.add(state, p, default, self.now)
            out.append(Expired(state, p, default, evicted))
        return out

    def learn(self, now: float, force: bool = False) -> int:
        """Learn the buffers that are due (all, with ``force``); returns how many rewards."""
        return self.learner.learn(now, force)

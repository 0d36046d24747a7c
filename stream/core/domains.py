"""Per-domain policies: created on first sight (bounded), deciding and learning in batches.

Each domain has its served baseline (variant ``control``); with ``ENABLE_RL_ADVANCED`` a
rollout domain also has the advanced policy (variant ``treatment``), which serves a stable
``RL_ROLLOUT_PERCENTAGE`` of its units. With ``ENABLE_RL_SHADOW_EVAL`` the
``RL_SHADOW_POLICIES`` learn beside them without serving, and before every learn each
policy's distribution is scored against the logged decisions (IPS, SNIPS, DR; a ridge
reward model per domain supplies DR's direct-method term). Every policy learns from every
joined reward, off-policy, through the logged probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate, chain

import numpy as np

from policies.base import ContextBatch, Decisions, Feedback, Policy
from policies.estimators import OnlineEstimate
from policies.features import EncodedContext, FeatureHasher, FeatureIndex
from policies.ridge import RidgePolicy
from stream.config import Settings
from stream.core.events import ContextEvent
from stream.core.join import Pending
from stream.core.policy_config import REWARD_MODEL_POLICY, build_policy, rollout_unit
from stream.failpoints import Failpoints
from stream.failpoints import check as failpoint

LearnError = Callable[[Exception, "DomainState", list[tuple[Pending, float]]], None]


# Variants: who served a decision (the wire's "variant", and the metrics' label).
CONTROL = "control"  # the baseline policy (RL_BASELINE_POLICY)
TREATMENT = "treatment"  # the advanced policy (RL_POLICY) on rollout domains
# Roles: a domain's policies as checkpoints name them ("served" is the baseline's).
BASELINE_ROLE = "served"
TREATMENT_ROLE = TREATMENT
REWARD_MODEL = "reward_model"
SHADOW = "shadow:"


@dataclass(slots=True)
class DomainState:
    name: str
    baseline: Policy  # serves the control variant
    treatment: Policy | None = None  # the advanced policy, on rollout domains
    shadows: dict[str, Policy] = field(default_factory=dict)
    reward_model: Policy | None = None  # direct-method model for DR estimates
    estimates: dict[str, OnlineEstimate] = field(default_factory=dict)  # role -> running
    actions: set[str] = field(default_factory=set)  # every candidate seen, bounded
    buffer: list[tuple[Pending, float]] = field(default_factory=list)
    buffer_since: float = 0.0
    decisions: int = 0
    rewards_joined: int = 0
    reward_sum: float = 0.0
    expired: int = 0
    partition: int = -1  # the input partition its messages come from (co-partitioned)
    frozen_at: int = -1  # the checkpoint generation referencing its arrays (-1: none)
    index: FeatureIndex | None = None  # its features' own slots (None: hashing alone)

    def roles(self) -> dict[str, Policy]:
        """Every policy of the domain by its role in checkpoints."""
        out = {BASELINE_ROLE: self.baseline}
        if self.treatment is not None:
            out[TREATMENT_ROLE] = self.treatment
        for name, pol in self.shadows.items():
            out[SHADOW + name] = pol
        if self.reward_model is not None:
            out[REWARD_MODEL] = self.reward_model
        return out

    def set_role(self, role: str, policy: Policy) -> None:
        if role == BASELINE_ROLE:
            self.baseline = policy
        elif role == TREATMENT_ROLE:
            self.treatment = policy
        elif role == REWARD_MODEL:
            self.reward_model = policy
        elif role.startswith(SHADOW):
            self.shadows[role[len(SHADOW) :]] = policy
        else:
            raise ValueError(f"unknown policy role {role!r}")


MANY_DOMAINS = 4  # from this many domains in a fetched batch on, decide them together
LEARN_CHUNK = 512  # rewards of many domains densified in one call before they learn
WRITE_WAIT_S = 10.0  # how long learning waits for a checkpoint's write before cloning


@dataclass(slots=True)
class Served:
    """One variant's share of a batch of contexts and its decisions."""

    variant: str
    policy: Policy
    events: list[ContextEvent]
    encoded: list[EncodedContext]
    decisions: Decisions


class Domains:
    """Owns every domain's policies and its buffer of rewards awaiting a learn."""

    def __init__(
        self,
        settings: Settings,
        hasher: FeatureHasher,
        failpoints: Failpoints | None = None,
        on_learn_error: LearnError | None = None,
    ) -> None:
        self.settings = settings
        self.hasher = hasher
        self.failpoints = failpoints
        # Told when a domain's learn raises (then its rewards are dropped from the
        # buffer); without it the exception propagates.
        self.on_learn_error = on_learn_error
        self.states: dict[str, DomainState] = {}
        # Domains with rewards awaiting a learn, in the order their buffers started.
        self._buffered: dict[str, DomainState] = {}
        self._full: list[DomainState] = []  # buffers that reached RL_UPDATE_INTERVAL
        self._arrived = 0  # rewards buffered since the last flush_due
        # Checkpoints reference the live policy arrays (no copy). Deciding never changes
        # them (a check-suite property); learning waits for the write, or, forced, clones.
        self.generation = 0
        self.write_in_flight, self._frozen_since = False, 0.0
        s = settings
        self._rollout = set(s.rollout_domains)

    def __len__(self) -> int:
        return len(self.states)

    # -- configuration ------------------------------------------------------------------
    def _new(self, name: str, domain: str) -> Policy:
        return build_policy(name, domain, self.settings)

    def in_rollout(self, domain: str) -> bool:
        return self.settings.enable_rl_advanced and (not self._rollout or domain in self._rollout)

    def complete(self, state: DomainState) -> None:
        """Give the domain exactly the policies the settings ask for (after a restore the
        settings may have changed: missing ones start fresh, unwanted ones are dropped)."""
        s = self.settings
        if self.in_rollout(state.name):
            if state.treatment is None or state.treatment.name != s.policy:
                state.treatment = self._new(s.policy, state.name)
        else:
            state.treatment = None
        wanted = s.shadow_policies if s.enable_rl_shadow_eval else []
        state.shadows = {
            n: state.shadows[n] if n in state.shadows else self._new(n, state.name) for n in wanted
        }
        if s.enable_rl_shadow_eval:
            if not isinstance(state.reward_model, RidgePolicy):
                state.reward_model = self._new(REWARD_MODEL_POLICY, state.name)
        else:
            state.reward_model = None
        keep = set(state.roles()) - {REWARD_MODEL} if s.enable_rl_shadow_eval else set()
        state.estimates = {r: state.estimates.get(r) or OnlineEstimate() for r in keep}

    def get_or_create(self, domain: str, partition: int = -1) -> DomainState | None:
        """The domain's state, created on first sight; None once ``max_domains`` are active."""
        state = self.states.get(domain)
        if state is not None:
            if partition >= 0:
                state.partition = partition
            return state
        if len(self.states) >= self.settings.max_domains:
            return None
        baseline = self._new(self.settings.baseline_policy, domain)
        index = FeatureIndex(self.hasher.n_features)
        state = DomainState(domain, baseline, partition=partition, index=index)
        self.complete(state)
        self.states[domain] = state
        return state

    # -- deciding -----------------------------------------------------------------------
    def variant_of(self, domain: str, event: ContextEvent) -> str:
        """``treatment`` for a stable RL_ROLLOUT_PERCENTAGE of units (unit_id, else the
        event id) of a rollout domain; ``control`` otherwise."""
        if not self.in_rollout(domain):
            return CONTROL
        unit = event.unit_id if event.unit_id is not None else event.event_id
        u = rollout_unit(domain, unit, self.settings.seed)
        return TREATMENT if u < self.settings.rollout_percentage else CONTROL

    def decide(self, state: DomainState, events: list[ContextEvent]) -> list[Served]:
        """Featurise and choose for a batch of one domain's contexts, per variant."""
        enc, index = self.hasher.encode, state.index
        out = []
        for variant, policy, evs in self._shares(state, events):
            encoded = [enc(e.context, e.candidates, e.candidate_features, index) for e in evs]
            batch = self.hasher.assemble(encoded, [e.event_id for e in evs])
            out.append(Served(variant, policy, evs, encoded, policy.choose(batch)))
        state.decisions += len(events)
        return out

    def _shares(
        self, state: DomainState, events: list[ContextEvent]
    ) -> list[tuple[str, Policy, list[ContextEvent]]]:
        """The events by rollout variant (in order of first appearance), with its policy."""
        if state.treatment is None:
            return [(CONTROL, state.baseline, events)]
        groups: dict[str, list[ContextEvent]] = {}
        for e in events:
            groups.setdefault(self.variant_of(state.name, e), []).append(e)
        return [
            (v, state.treatment if v == TREATMENT else state.baseline, evs)
            for v, evs in groups.items()
        ]

    def decide_many(
        self, batches: list[tuple[DomainState, list[ContextEvent]]]
    ) -> list[list[Served]]:
        """:meth:`decide` for many domains at once: the shares of every domain whose
        policies are of one class go to that class in one call (the same decisions as one
        call per share; many quiet domains no longer pay a policy call each)."""
        if len(batches) < MANY_DOMAINS:  # the grouping would cost more than it saves
            return [self.decide(state, events) for state, events in batches]
        enc, indexes = self.hasher.encode, [state.index for state, _ in batches]
        shares: list[tuple[int, str, Policy, list[ContextEvent]]] = []
        for j, (state, events) in enumerate(batches):
            shares.extend((j, v, policy, evs) for v, policy, evs in self._shares(state, events))
        by_class: dict[type[Policy], list[int]] = {}
        for n, share in enumerate(shares):
            by_class.setdefault(type(share[2]), []).append(n)
        served: dict[int, Served] = {}
        for cls, members in by_class.items():
            encoded = [
                [
                    enc(e.context, e.candidates, e.candidate_features, indexes[shares[n][0]])
                    for e in shares[n][3]
                ]
                for n in members
            ]
            keys = [e.event_id for n in members for e in shares[n][3]]
            batch = self.hasher.assemble(list(chain.from_iterable(encoded)), keys)
            starts = [0, *accumulate(len(x) for x in encoded)]
            chosen = cls.choose_many([shares[n][2] for n in members], batch, starts)
            for n, mine, dec in zip(members, encoded, chosen, strict=True):
                _, variant, policy, evs = shares[n]
                served[n] = Served(variant, policy, evs, mine, dec)
        out: list[list[Served]] = [[] for _ in batches]
        for n, share in enumerate(shares):
            out[share[0]].append(served[n])
        for state, events in batches:
            state.decisions += len(events)
        return out

    # -- learning -----------------------------------------------------------------------
    def add_feedback(self, state: DomainState, pending: Pending, reward: float, now: float) -> None:
        self._arrived += 1
        if not state.buffer:
            state.buffer_since = now
            self._buffered[state.name] = state
        state.buffer.append((pending, reward))
        if len(state.buffer) == self.settings.update_interval:
            self._full.append(state)

    def flush_due(self, now: float, force: bool = False, budget_s: float = 0.02) -> int:
        """Learn the buffers that are old enough (oldest first), then the full ones; returns
        how many rewards were learned. Without ``force`` it stops after ``budget_s``, so a
        backlog is spread over turns instead of stalling decisions, but not before it has
        learned as many rewards as were joined since the last call (docs/design.md,
        "Learning budget")."""
        learned = 0
        floor, self._arrived = self._arrived, 0
        limit = self.settings.update_interval
        if force:
            due, self._full = list(self._buffered.values()), []
        else:
            # The buffers started longest ago are first: scan only while they are old
            # enough; full ones are listed when they fill. No scan of every buffer per turn.
            due = []
            max_delay = self.settings.update_max_delay_s
            for state in self._buffered.values():
                if now - state.buffer_since < max_delay:
                    break
                due.append(state)
            due.extend(self._full)
            self._full = []
            # A domain being written learns after it (a clone would double it), if it is quick.
            if self.write_in_flight and time.monotonic() - self._frozen_since < WRITE_WAIT_S:
                self._full = [st for st in due if self._frozen(st) and len(st.buffer) >= limit]
                due = [st for st in due if not self._frozen(st)]
        # A buffer listed twice (old enough and full), or released since: learned once.
        due = list(
            {st.name: st for st in due if st.buffer and self._buffered.get(st.name) is st}.values()
        )
        start = time.perf_counter()
        batches: dict[str, ContextBatch | None] = {}
        for i, state in enumerate(due):
            buf = state.buffer
            if state.name not in batches and i + 1 < len(due):
                batches = self._assemble_from(due, i)
            try:
                failpoint(self.failpoints, "learn")
                learned += self._learn(state, buf, batches.get(state.name))
            except Exception as exc:
                if self.on_learn_error is None:
                    raise
                self.on_learn_error(exc, state, buf)
            state.buffer = []
            del self._buffered[state.name]
            if not force and learned >= floor and time.perf_counter() - start > budget_s:
                # Over budget: the full buffers not reached stay listed for the next turn.
                self._full += [st for st in due[i + 1 :] if len(st.buffer) >= limit]
                break
        return learned

    def _assemble_from(self, due: list[DomainState], i: int) -> dict[str, ContextBatch | None]:
        """The buffers of ``due[i:]`` (up to LEARN_CHUNK rewards) densified in one call,
        sliced per domain; None each if it raises (each domain's own call then blames it)."""
        chunk: list[DomainState] = []
        n = 0
        for state in due[i:]:
            if chunk and n + len(state.buffer) > LEARN_CHUNK:
                break
            chunk.append(state)
            n += len(state.buffer)
        try:
            batch = self.hasher.assemble(
                [p.encoded for st in chunk for p, _ in st.buffer],
                [p.event_id for st in chunk for p, _ in st.buffer],
            )
        except Exception:
            return dict.fromkeys(st.name for st in chunk)
        out: dict[str, ContextBatch | None] = {}
        start = 0
        for st in chunk:
            out[st.name] = batch.events(start, start + len(st.buffer))
            start += len(st.buffer)
        return out

    def put(self, state: DomainState) -> None:
        """Install a restored domain (replacing any same-named one and its buffer)."""
        self.complete(state)
        self.states[state.name] = state
        self._buffered.pop(state.name, None)

    def release(self, partitions: set[int]) -> set[str]:
        """Drop the domains of ``partitions`` (now another instance's); returns their names."""
        names = {n for n, st in self.states.items() if st.partition in partitions}
        for n in names:
            del self.states[n]
            self._buffered.pop(n, None)
        return names

    def signature(self, state: DomainState) -> tuple[int, int, int, int]:
        """Changes whenever the domain's policy or pending decisions change."""
        return (state.decisions, state.rewards_joined, state.expired, state.baseline.n_learned)

    def _frozen(self, state: DomainState) -> bool:
        return self.write_in_flight and state.frozen_at == self.generation

    def _thaw(self, state: DomainState) -> None:
        if self._frozen(state):
            for role, pol in state.roles().items():
                state.set_role(role, pol.clone())
        state.frozen_at = -1

    def freeze_all(self) -> None:
        """Start a snapshot generation: every policy's current arrays are now referenced."""
        self.generation += 1
        self.write_in_flight, self._frozen_since = True, time.monotonic()
        for state in self.states.values():
            state.frozen_at = self.generation

    def _learn(
        self, state: DomainState, items: list[tuple[Pending, float]], batch: ContextBatch | None
    ) -> int:
        """Every policy of the domain learns ``items`` (``batch``: their rows, if assembled)."""
        self._thaw(state)
        if batch is None:
            batch = self.hasher.assemble(
                [p.encoded for p, _ in items], [p.event_id for p, _ in items]
            )
        rows = batch.offsets[:-1] + np.fromiter((p.chosen for p, _ in items), np.int64, len(items))
        rewards = np.fromiter((r for _, r in items), np.float64, len(items))
        probs = np.fromiter((p.probability for p, _ in items), np.float64, len(items))
        feedback = Feedback(batch, rows, rewards, probs)
        if state.estimates:
            self._evaluate(state, feedback)
        for pol in state.roles().values():
            pol.learn(feedback)
        return len(items)

    def _evaluate(self, state: DomainState, logged: Feedback) -> None:
        """Score every policy against the logged decisions before it learns them (so each
        estimate is of the policy as it would have acted)."""
        model = state.reward_model
        r_hat = model.predict_rewards(logged.batch) if isinstance(model, RidgePolicy) else None
        roles = state.roles()
        for role, acc in state.estimates.items():
            acc.score(roles[role], logged, r_hat)

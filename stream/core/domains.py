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

from dataclasses import dataclass
from itertools import accumulate, chain

from policies.base import Decisions, Policy
from policies.estimators import OnlineEstimate
from policies.features import EncodedContext, FeatureHasher, FeatureIndex
from policies.ridge import RidgePolicy
from stream.config import Settings
from stream.core.domain import (
    CONTROL,
    REWARD_MODEL,
    TREATMENT,
    DomainState,
)
from stream.core.events import ContextEvent
from stream.core.learner import Learner, LearnError
from stream.core.policy_config import REWARD_MODEL_POLICY, build_policy, rollout_unit
from stream.failpoints import Failpoints

MANY_DOMAINS = 4  # from this many domains in a fetched batch on, decide them together


@dataclass(slots=True)
class Served:
    """One variant's share of a batch of contexts and its decisions."""

    variant: str
    policy: Policy
    events: list[ContextEvent]
    encoded: list[EncodedContext]
    decisions: Decisions


class Domains:
    """The registry of domains: created on first sight (bounded), their rollout, and
    deciding for batches of their contexts; their learning is the :class:`Learner`'s."""

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
        self.states: dict[str, DomainState] = {}
        # Learns the rewards joined to the domains' decisions, on the update cadence.
        self.learner = Learner(settings, hasher, failpoints, on_learn_error)
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

    def put(self, state: DomainState) -> None:
        """Install a restored domain (replacing any same-named one and its buffer)."""
        self.complete(state)
        self.states[state.name] = state
        self.learner.forget({state.name})

    def release(self, partitions: set[int]) -> set[str]:
        """Drop the domains of ``partitions`` (now another instance's); returns their names."""
        names = {n for n, st in self.states.items() if st.partition in partitions}
        for n in names:
            del self.states[n]
        self.learner.forget(names)
        return names

    def signature(self, state: DomainState) -> tuple[int, int, int, int]:
        """Changes whenever the domain's policy or pending decisions change."""
        return (state.decisions, state.rewards_joined, state.expired, state.baseline.n_learned)

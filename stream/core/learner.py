"""Learning: rewards joined to their decisions wait in per-domain buffers and are learned
in batches, on the update cadence (``RL_UPDATE_INTERVAL`` rewards, or
``RL_UPDATE_MAX_DELAY_S`` after a buffer started), within a time budget per turn.

Before every learn each policy's distribution is scored against the logged decisions
(shadow evaluation: IPS, SNIPS, DR). A checkpoint references the live policy arrays (no
copy): between :meth:`Learner.begin_write` and :meth:`Learner.end_write` a domain being
written learns after the write, or, when learning cannot wait, on a clone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from policies.base import ContextBatch, Feedback
from policies.features import FeatureHasher
from policies.ridge import RidgePolicy
from stream.config import Settings
from stream.core.domain import DomainState
from stream.core.join import Pending
from stream.failpoints import Failpoints
from stream.failpoints import check as failpoint

LearnError = Callable[[Exception, DomainState, list[tuple[Pending, float]]], None]
LEARN_CHUNK = 512  # rewards of many domains densified in one call before they learn
WRITE_WAIT_S = 10.0  # how long learning waits for a checkpoint's write before cloning


class Learner:
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
        # Domains with rewards awaiting a learn, in the order their buffers started.
        self._buffered: dict[str, DomainState] = {}
        self._full: list[DomainState] = []  # buffers that reached RL_UPDATE_INTERVAL
        self._arrived = 0  # rewards buffered since the last learn
        # Checkpoints reference the live policy arrays (no copy). Deciding never changes
        # them (a check-suite property); learning waits for the write, or, forced, clones.
        self.generation = 0
        self._writing, self._frozen_since = False, 0.0

    def forget(self, names: Iterable[str]) -> None:
        """Domains released or replaced: their buffers go with them."""
        for n in names:
            self._buffered.pop(n, None)

    # -- checkpoints ---------------------------------------------------------------------
    def begin_write(self, states: Iterable[DomainState]) -> None:
        """A snapshot now references every policy's current arrays (copy-on-write)."""
        self.generation += 1
        self._writing, self._frozen_since = True, time.monotonic()
        for state in states:
            state.frozen_at = self.generation

    def end_write(self) -> None:
        """The snapshot's write is over: its arrays may change again."""
        self._writing = False

    @property
    def writing(self) -> bool:
        return self._writing

    # -- learning -----------------------------------------------------------------------
    def add(self, state: DomainState, pending: Pending, reward: float, now: float) -> None:
        """Buffer a joined (or default) reward for the domain's next learn."""
        self._arrived += 1
        if not state.buffer:
            state.buffer_since = now
            self._buffered[state.name] = state
        state.buffer.append((pending, reward))
        if len(state.buffer) == self.settings.update_interval:
            self._full.append(state)

    def learn(self, now: float, force: bool = False, budget_s: float = 0.004) -> int:
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
            if self._writing and time.monotonic() - self._frozen_since < WRITE_WAIT_S:
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

    def _frozen(self, state: DomainState) -> bool:
        return self._writing and state.frozen_at == self.generation

    def _thaw(self, state: DomainState) -> None:
        if self._frozen(state):
            for role, pol in state.roles().items():
                state.set_role(role, pol.clone())
        state.frozen_at = -1

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

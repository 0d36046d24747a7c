"""Which of a domain's fetched contexts may be decided: the domain within RL_MAX_DOMAINS,
an event id neither pending nor joined already, its candidates within RL_MAX_ACTIONS.
The others are rejected with their reason."""

from __future__ import annotations

from stream.config import Settings
from stream.core.domain import DomainState
from stream.core.domains import Domains
from stream.core.events import ContextEvent
from stream.core.join import PendingJoins
from stream.rejections import Rejections


class Admission:
    def __init__(
        self, settings: Settings, domains: Domains, joins: PendingJoins, rejections: Rejections
    ) -> None:
        self.settings = settings
        self.domains = domains
        self.joins = joins
        self.rejections = rejections

    def admit(
        self, domain: str, events: list[ContextEvent], partition: int
    ) -> tuple[DomainState, list[ContextEvent]] | None:
        """The domain and those of its contexts that may be decided; the rest rejected."""
        state = self.domains.get_or_create(domain, partition)
        if state is None:
            for ev in events:
                self.rejections.reject(
                    "domain_limit",
                    f"domain {domain!r} would exceed RL_MAX_DOMAINS={self.settings.max_domains}",
                    ev.source,
                )
            return None
        fresh: list[ContextEvent] = []
        seen: set[str] = set()
        max_actions = self.settings.max_actions
        actions = state.actions
        for ev in events:
            if ev.event_id in seen or (domain, ev.event_id) in self.joins:
                self.rejections.reject(
                    "duplicate_event", f"event_id {ev.event_id!r} is already pending", ev.source
                )
                continue
            if self.joins.finished and self.joins.was_decided(domain, ev.event_id, ev.record_time):
                self.rejections.reject(
                    "duplicate_event", f"event_id {ev.event_id!r} was already decided", ev.source
                )
                continue
            if actions.issuperset(ev.candidates):  # the common case: no new action
                seen.add(ev.event_id)
                fresh.append(ev)
                continue
            new = [c for c in ev.candidates if c not in actions]
            if len(actions) + len(new) > max_actions:
                self.rejections.reject(
                    "action_limit",
                    f"domain {domain!r} would exceed RL_MAX_ACTIONS={max_actions} distinct actions",
                    ev.source,
                )
                continue
            actions.update(new)
            seen.add(ev.event_id)
            fresh.append(ev)
        return (state, fresh) if fresh else None

"""Scale out and disaster recovery: a second instance, and a lost local disk."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

DOMAINS = [f"d{i}" for i in range(12)]


def _learned(*services) -> dict[str, int]:
    out: dict[str, int] = {}
    for svc in services:
        for name, st in svc.domains.states.items():
            out[name] = st.baseline.n_learned
    return out


def test_a_second_instance_takes_half_the_partitions_with_their_learned_state(
    settings_factory, start_service, client_factory, tmp_path
):
    settings = settings_factory(topic_partitions=4, checkpoint_interval_s=1.0)
    first = start_service(settings)
    client = client_factory(settings)
    for i in range(10):
        for d in DOMAINS:
            client.context(f"{d}-a{i}", domain=d)
    client.decisions(10 * len(DOMAINS))
    for i in range(6):  # the other 4 rewards per domain come after the rebalance
        for d in DOMAINS:
            client.reward(f"{d}-a{i}", float(i % 2), domain=d)
    client.flush()
    a = first.service
    wait_for(lambda: _learned(a) == dict.fromkeys(DOMAINS, 6), what="first instance learning")
    partitions = {st.partition for st in a.domains.states.values()}
    assert len(partitions) >= 3, "the test's domains should spread over the partitions"

    second = start_service(settings.model_copy(update={"state_dir": tmp_path / "second"}))
    b = second.service
    wait_for(
        lambda: len(a.ownership.held) == 2 and len(b.ownership.held) == 2,
        what="the group to split the 4 partitions",
    )
    assert a.ownership.held.isdisjoint(b.ownership.held)
    # The domains moved with their partitions and arrived learned, not from scratch.
    moved = {n for n, st in b.domains.states.items()}
    assert moved, "no domain moved to the second instance"
    assert moved.isdisjoint(a.domains.states)
    assert {st.partition for st in b.domains.states.values()} <= b.ownership.held
    assert _learned(b) == dict.fromkeys(moved, 6)
    assert b.ownership.restored_from_topic >= 1  # its own disk had nothing
    assert len(b.joins) == 4 * len(moved)  # their decisions awaiting rewards moved too
    for i in range(6, 10):
        for d in DOMAINS:
            client.reward(f"{d}-a{i}", 1.0, domain=d)
    client.flush()
    wait_for(lambda: _learned(a, b) == dict.fromkeys(DOMAINS, 10), what="the moved joins")

    # Decisions keep flowing for every domain, each decided and learned by its owner.
    for i in range(5):
        for d in DOMAINS:
            client.context(f"{d}-b{i}", domain=d)
    later = [x for x in client.decisions(5 * len(DOMAINS)) if "-b" in x["event_id"]]
    assert len(later) == 5 * len(DOMAINS)
    for i in range(5):
        for d in DOMAINS:
            client.reward(f"{d}-b{i}", 1.0, domain=d)
    client.flush()
    wait_for(lambda: _learned(a, b) == dict.fromkeys(DOMAINS, 15), what="both instances learning")
    assert b.stats.decisions == 5 * len(moved)  # nothing of the first phase decided again


def test_a_lost_disk_is_restored_from_the_state_topic(
    settings_factory, start_service, client_factory
):
    settings = settings_factory(checkpoint_interval_s=3600.0)
    first = start_service(settings)
    client = client_factory(settings)
    for i in range(30):
        for d in ("x1", "x2"):
            client.context(f"{d}-{i}", domain=d)
    client.decisions(60)
    for i in range(12):
        for d in ("x1", "x2"):
            client.reward(f"{d}-{i}", 1.0, domain=d)
    client.flush()
    wait_for(lambda: _learned(first.service) == {"x1": 12, "x2": 12}, what="learning")
    first.stop()  # the shutdown checkpoint also publishes every domain to the state topic

    shutil.rmtree(settings.state_dir)  # the machine and its disk are gone
    second = start_service(settings)
    svc = second.service
    assert _learned(svc) == {"x1": 12, "x2": 12}
    assert len(svc.joins) == 36  # the other 18 per domain still await their rewards
    assert svc.ownership.restored_from_topic == 2
    assert svc.ownership.restored_from_local == 0
    for i in range(12, 30):
        client.reward(f"x1-{i}", 0.0, domain="x1")
    client.reward("x1-0", 1.0, domain="x1")  # learned before: never learned twice
    client.flush()
    wait_for(lambda: _learned(svc)["x1"] == 30, what="restored pending joins to learn")
    time.sleep(1.0)
    assert _learned(svc) == {"x1": 30, "x2": 12}
    assert svc.stats.decisions == 0  # no context decided again

"""State that survives a restart: policies, pending joins and offsets from the checkpoint."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def test_restart_restores_policies_pending_joins_and_offsets(
    settings_factory, start_service, client_factory
):
    settings = settings_factory(checkpoint_interval_s=3600.0)
    first = start_service(settings)
    client = client_factory(settings)
    for i in range(30):
        client.context(f"e{i}")
    before = {d["event_id"]: d for d in client.decisions(30)}
    for i in range(10):
        client.reward(f"e{i}", 1.0)
    client.flush()
    wait_for(lambda: first.service.domains.states["d1"].baseline.n_learned == 10, what="learning")
    first.stop()  # clean shutdown writes a checkpoint, then commits its offsets
    assert first.service.checkpointer.written >= 1

    second = start_service(settings)
    state = second.service.domains.states["d1"]
    assert state.baseline.n_learned == 10  # learned state, not from scratch
    assert len(second.service.joins) == 20  # e10..e29 still await their rewards
    for i in range(10, 20):
        client.reward(f"e{i}", 0.0)
    client.reward("e0", 1.0)  # learned before the restart: never learned twice
    client.flush()
    wait_for(lambda: state.baseline.n_learned == 20, what="restored pending joins to learn")
    # e0's second reward is never learned; the old contexts are not decided again.
    assert client.learned_before_marker(lambda: state.baseline.n_learned) == 20
    assert second.service.stats.rewards_joined == 11  # e10..e19 and the marker
    assert second.service.stats.decisions == 1  # the marker alone
    # A new context is decided by the restored policy and carries its version.
    client.context("after")
    after = [d for d in client.decisions(1) if d["event_id"] == "after"]
    assert after and after[0]["policy_version"] == 21
    assert before["e0"]["policy_version"] == 0


def test_a_replayed_context_is_served_its_published_decision(
    settings_factory, start_service, client_factory
):
    """Contexts decided after the last checkpoint are replayed into the restored state:
    each awaits its reward with the decision already published (not a new one, which a
    policy that learned meanwhile would make differently), and nothing is published twice."""
    settings = settings_factory(checkpoint_interval_s=0.5)
    first = start_service(settings)
    client = client_factory(settings)
    for i in range(20):
        client.context(f"a{i}", context={"x": float(i)})
    client.decisions(20)
    for i in range(20):
        client.reward(f"a{i}", float(i % 2))
    client.flush()
    svc = first.service
    wait_for(lambda: svc.domains.states["d1"].baseline.n_learned == 20, what="learning")
    written = svc.checkpointer.written
    wait_for(lambda: svc.checkpointer.written > written + 1, what="a checkpoint of that state")
    svc.checkpoint = lambda *a, **k: None  # type: ignore[method-assign]  # none from here on
    for i in range(15):
        client.context(f"b{i}", context={"x": float(i)})
    original = {d["event_id"]: d for d in client.decisions(15)}
    # Stop as a crash would: no further checkpoint and no commit, so the b-contexts lie
    # after the last checkpoint (in-process, so the test can compare exact decisions).
    first.stop()

    second = start_service(settings)
    again = second.service
    wait_for(lambda: again.stats.republished == 15, what="the replayed contexts")
    assert client.consumer.consume(num_messages=10, timeout=1.0) == []  # none published again
    assert again.stats.decisions == 0
    pending = {p.event_id: p for p in again.joins.items()}
    for eid, d in original.items():
        p = pending[eid]
        assert p.encoded.candidates[p.chosen] == d["action"]
        assert p.probability == d["probability"] and p.policy == d["policy"]
    for i in range(15):
        client.reward(f"b{i}", 1.0)
    client.flush()
    wait_for(lambda: again.stats.rewards_joined == 15, what="the rewards joined")


def test_contexts_and_rewards_must_be_co_partitioned(bootstrap):
    import uuid

    from confluent_kafka.admin import AdminClient, NewTopic

    from stream.config import load_settings
    from stream.errors import ConfigError
    from stream.kafka.clients import admin_config
    from stream.kafka.topics import ensure_topics

    tag = uuid.uuid4().hex[:8]
    names = {f"topic_{t}": f"m-{tag}.{t}" for t in ("decisions", "metrics", "dead_letter", "state")}
    s = load_settings(
        kafka_bootstrap_servers=bootstrap,
        topic_contexts=f"m-{tag}.c",
        topic_rewards=f"m-{tag}.r",
        **names,
    )
    admin = AdminClient(admin_config(s))
    for f in admin.create_topics(
        [NewTopic(f"m-{tag}.c", 4, 1), NewTopic(f"m-{tag}.r", 2, 1)]
    ).values():
        f.result()
    with pytest.raises(ConfigError, match="same partition count"):
        ensure_topics(s, admin)


def _decide_learn_and_stop(settings, start_service, client_factory, n: int, learn: bool) -> None:
    """A first run: ``n`` contexts decided (and rewarded and learned), then a clean stop."""
    first = start_service(settings)
    client = client_factory(settings)
    for i in range(n):
        client.context(f"e{i}")
    client.decisions(n)
    if learn:
        for i in range(n):
            client.reward(f"e{i}", 1.0)
        client.flush()
        states = first.service.domains.states
        wait_for(lambda: states["d1"].baseline.n_learned == n, what="learning")
    first.stop()


@pytest.mark.parametrize("damage", ["first_bytes", "truncated", "middle"])
def test_a_damaged_local_store_falls_back_to_the_state_topic(
    settings_factory, start_service, client_factory, damage, caplog
):
    settings = settings_factory(checkpoint_interval_s=3600.0)
    _decide_learn_and_stop(settings, start_service, client_factory, 10, learn=True)
    path = settings.state_dir / "checkpoints.sqlite"
    data = bytearray(path.read_bytes())
    if damage == "first_bytes":
        data[:100] = b"\xff" * 100
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        mid = len(data) // 2
        data[mid : mid + 4096] = b"\x00" * 4096
    path.write_bytes(bytes(data))

    second = start_service(settings)  # on 56420a3: "cannot open checkpoint file", exit 2
    assert second.service.domains.states["d1"].baseline.n_learned == 10
    assert any("is damaged" in r.getMessage() for r in caplog.records)
    assert list(settings.state_dir.glob("checkpoints.sqlite.damaged-*"))


def test_failing_checkpoints_show_in_age_readiness_and_the_exit(settings_factory, start_service):
    settings = settings_factory(checkpoint_interval_s=0.2, failpoints="checkpoint_write:1")
    running = start_service(settings)
    svc = running.service
    wait_for(lambda: svc.checkpointer.failures >= 3, what="three failed checkpoints")
    ready, why = svc.probes.readiness()
    assert not ready and "checkpoints in a row failed" in why and "failpoint" in why
    time.sleep(1.0)
    svc.report_metrics()
    age = svc.metrics.registry.get_sample_value("bandit_checkpoint_age_seconds")
    assert age is not None and age >= 1.0  # grows from the start: none succeeded
    running.stop()
    assert svc.shutdown_clean is False  # `bandit-stream run` exits 1


def test_losing_the_local_store_and_the_state_topic_is_reported(
    settings_factory, start_service, client_factory, caplog
):
    import shutil

    from confluent_kafka.admin import AdminClient

    from stream.kafka.clients import admin_config
    from stream.kafka.topics import ensure_topics

    settings = settings_factory(checkpoint_interval_s=3600.0)
    _decide_learn_and_stop(settings, start_service, client_factory, 5, learn=False)
    shutil.rmtree(settings.state_dir)
    # The state topic is emptied too: a new, empty one under the same settings' name.
    renamed = settings.model_copy(update={"topic_state": settings.topic_state + ".new"})
    ensure_topics(renamed, AdminClient(admin_config(renamed)))
    caplog.clear()
    start_service(renamed)
    assert any("state lost" in r.getMessage() for r in caplog.records)

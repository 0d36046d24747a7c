"""`bandit-stream bench hotpath`: the batch processor's cost per context, with no broker.

The service's own collaborators (``Service`` built from the settings, as `run` builds
it) are fed pre-built message batches — each ``batch`` contexts spread over ``domains``
domains plus the rewards of the batch before — exactly as ``Service.turn`` hands them
over: process, expire, learn what is due, poll. The producer is a sink that acknowledges
every record at its next poll. ``us_per_context`` is that loop's wall time per context
(rewards included), after warm-up batches.

Stages are the product's own functions timed in isolation on the same batches, in
order, on a second service: ``decode`` (bytes -> events), ``featurise`` (the domains'
contexts hashed and assembled in the groups one policy call decides), ``choose`` (the
policies' decisions), ``encode``
(decision JSON), ``join`` (pending decisions in, rewards matched, buffered for learning),
``learn`` (the due buffers learned). ``other`` is the processor's total minus their sum:
its per-event loop, metrics and produce calls.
"""

from __future__ import annotations

import gc
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from policies.kernels import warm_up
from stream.bench.load import messages
from stream.bench.report import machine, markdown_table, write_json, write_markdown
from stream.config import Settings
from stream.core.domains import Served
from stream.core.join import Pending, PendingJoins
from stream.kafka.clients import producer_config
from stream.kafka.codec import (
    ContextEvent,
    Decision,
    RewardEvent,
    decode_context,
    decode_reward,
    encode_decision,
)
from stream.service import Service

STAGES = ("decode", "featurise", "choose", "encode", "join", "learn")


class SinkProducer:
    """A confluent ``Producer`` stand-in that keeps nothing: each record is acknowledged
    at the next poll, as a broker answering at once would; with ``only_errors`` (the
    producer's ``delivery.report.only.error``) no callback runs for a delivered one."""

    def __init__(self, only_errors: bool = False) -> None:
        self.produced = 0
        self.only_errors = only_errors
        self._acks: list[tuple[Callable[..., None] | None, Message]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        self.produced += 1
        report = None if self.only_errors else kw.get("on_delivery")
        self._acks.append((report, Message(topic=topic, value=value, key=key)))

    def poll(self, timeout: float = 0) -> int:
        acks, self._acks = self._acks, []
        for report, msg in acks:
            if report is not None:
                report(None, msg)
        return len(acks)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self._acks)


def traffic(s: Settings, domains: int, batch: int, batches: int, seed: int) -> list[list[Any]]:
    """``batches`` lists of Kafka messages: ``batch`` contexts each, and the rewards of
    the contexts ``batch`` before (the bench's own stream, as the e2e benches send it)."""
    out: list[list[Any]] = [[] for _ in range(batches)]
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    stamp = (TIMESTAMP_CREATE_TIME, int(time.time() * 1000))
    contexts = 0
    for is_context, value, key in messages(batch * batches, domains, batch, seed, True, False):
        if contexts >= batch * batches:
            break  # the trailing rewards: every batch has its share already
        topic = s.topic_contexts if is_context else s.topic_rewards
        part = zlib.crc32(key) % s.topic_partitions
        off = offsets[(topic, part)]
        offsets[(topic, part)] = off + 1
        msg = Message(
            topic=topic, partition=part, offset=off, key=key, value=value, timestamp=stamp
        )
        out[contexts // batch].append(msg)
        contexts += is_context
    return out


def _service(s: Settings) -> tuple[Service, SinkProducer]:
    svc = Service(s)
    sink = SinkProducer(bool(producer_config(s).get("delivery.report.only.error")))
    svc.processor.attach(sink)  # type: ignore[arg-type]
    return svc, sink


def processor_us(s: Settings, batches: list[list[Any]], warm: int) -> tuple[float, int]:
    """The processor's wall time per context over ``batches[warm:]``; and decisions made."""
    svc, sink = _service(s)
    spent, contexts = 0.0, 0
    for i, msgs in enumerate(batches):
        start = time.perf_counter()
        svc.processor.handle(msgs, time.time(), start)
        if i >= warm:
            spent += time.perf_counter() - start
            contexts += sum(m.topic() == s.topic_contexts for m in msgs)
    return spent / max(1, contexts) * 1e6, sink.produced


def stage_us(s: Settings, batches: list[list[Any]], warm: int) -> dict[str, float]:
    """Each stage's own functions, timed apart on the same batches (module doc)."""
    svc, _ = _service(s)
    doms, joins = svc.domains, svc.joins
    spent = dict.fromkeys(STAGES, 0.0)
    contexts = 0
    clock = time.perf_counter
    hashing = [0.0]  # featurise: the hasher's calls inside the decide call, timed as made
    for name in ("encode", "assemble"):
        setattr(svc.hasher, name, _timed(getattr(svc.hasher, name), hashing))
    for i, msgs in enumerate(batches):
        lap = dict.fromkeys(STAGES, 0.0)
        now = time.time()
        t = clock()
        by_domain: dict[str, list[ContextEvent]] = defaultdict(list)
        rewards: list[RewardEvent] = []
        for m in msgs:
            if m.topic() == s.topic_contexts:
                ev = decode_context(m.value(), m.key(), svc.processor.limits)
                by_domain[ev.domain].append(ev)
            else:
                rewards.append(decode_reward(m.value(), m.key(), svc.processor.limits))
        lap["decode"] = clock() - t
        items = []
        for domain, events in by_domain.items():
            state = doms.get_or_create(domain, 0)
            assert state is not None
            items.append((state, events))
        hashing[0] = 0.0
        t = clock()
        decided = doms.decide_many(items)
        lap["featurise"] = hashing[0]
        lap["choose"] = clock() - t - hashing[0]
        for (state, _), served in zip(items, decided, strict=True):
            for share in served:
                _encode_and_hold(s, joins, state.name, share, now, lap)
        t = clock()
        for r in rewards:
            _, pending = joins.take(r.domain, r.event_id)
            if pending is not None:
                doms.learner.add(doms.states[r.domain], pending, r.reward, now)
        lap["join"] += clock() - t
        t = clock()
        doms.learner.learn(now)
        lap["learn"] = clock() - t
        if i >= warm:
            contexts += sum(len(v) for v in by_domain.values())
            for stage, v in lap.items():
                spent[stage] += v
    return {k: v / max(1, contexts) * 1e6 for k, v in spent.items()}


def _timed(fn: Callable[..., Any], total: list[float]) -> Callable[..., Any]:
    """``fn``, adding the time each call takes to ``total[0]``."""

    def timed(*args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            total[0] += time.perf_counter() - t

    return timed


def _encode_and_hold(
    s: Settings, joins: PendingJoins, domain: str, share: Served, now: float, lap: dict[str, float]
) -> None:
    """The encode and join-bookkeeping stages of one share, timed into ``lap``."""
    clock = time.perf_counter
    dec, events, policy = share.decisions, share.events, share.policy
    t = clock()
    rows, probs, pmf = dec.row.tolist(), dec.probability.tolist(), dec.pmf.tolist()
    start = 0
    for j, ev in enumerate(events):
        k = len(ev.candidates)
        encode_decision(
            Decision(
                ev.event_id,
                domain,
                ev.candidates[rows[j] - start],
                probs[j],
                dict(zip(ev.candidates, pmf[start : start + k], strict=False)),
                policy.name,
                policy.n_learned,
                share.variant,
                now,
                0.0,
            )
        )
        start += k
    lap["encode"] += clock() - t
    t = clock()
    start = 0
    for j, ev in enumerate(events):
        p = Pending(
            domain,
            ev.event_id,
            share.encoded[j],
            rows[j] - start,
            probs[j],
            policy.name,
            share.variant,
            now,
            now + s.reward_wait_s,
        )
        joins.add(p)
        start += len(ev.candidates)
    lap["join"] += clock() - t


def run(
    settings: Settings,
    domains: Sequence[int],
    batch: int,
    batches: int,
    out: Path,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per domain count: µs per context, in total and by stage."""
    warm_up()
    warm = max(2, batches // 10)
    rows: list[dict[str, Any]] = []
    for n in domains:
        with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
            s = settings.model_copy(update={"state_dir": Path(tmp), "max_domains": max(n, 1)})
            msgs = traffic(s, n, batch, batches, seed)
            # Fetched messages live for one turn in the service; here every batch lives
            # throughout: kept out of the collector's scans, as `run` keeps its imports.
            gc.freeze()
            try:
                total, decided = processor_us(s, msgs, warm)
                if decided != batch * batches:
                    raise RuntimeError(f"{decided} decisions for {batch * batches} contexts")
                stages = stage_us(s, msgs, warm)
            finally:
                gc.unfreeze()
        stages["other"] = max(0.0, total - sum(stages.values()))
        rows.append(
            {
                "domains": n,
                "batch": batch,
                "us_per_context": round(total, 2),
                "stages": {k: round(v, 2) for k, v in stages.items()},
            }
        )
    write_json(out, "hotpath", {"rows": rows, "batches": batches, "machine": machine()})
    names = [*STAGES, "other"]
    table = markdown_table(
        ["domains", "batch", "µs/context", *names],
        [
            [r["domains"], r["batch"], r["us_per_context"], *(r["stages"][k] for k in names)]
            for r in rows
        ],
    )
    write_markdown(
        out,
        "hotpath",
        "# Hot path: µs per context, in process\n\n"
        f"The batch processor on the settings' defaults, {batches} batches per row (the "
        "first tenth warm-up), rewards flowing; stages timed apart (`stream/bench/"
        "hotpath.py`).\n\n" + table + "\n",
    )
    return rows

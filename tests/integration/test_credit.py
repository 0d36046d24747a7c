"""Every reward credited exactly once, to the decision that was served, whatever fails.

Two instances of ``bandit-stream run`` share the group, learning at every reward
(``RL_UPDATE_INTERVAL=1``) with a policy whose decisions follow what it learned (linucb),
while an application streams contexts over several domains, rewards each decision it is
shown, and re-sends some contexts and rewards. At random moments: kill -9 of an instance,
SIGSTOP past the group session then SIGCONT, both instances stopped for longer than the
reward window, and (on three Apache Kafka nodes) the leader of the busiest partitions
killed. The invariant is checked, not the mechanism, from the topics, the joined logs and
the state the instances leave on the state topic:

- every context decided, and every copy of an event id's decision identical;
- every reward stamped within its window credited once, to the served action with its
  logged probability: the policy of each domain learned exactly the distinct in-time
  rewards of the domain (``RL_DEFAULT_REWARD=none``: nothing else is learned), and every
  joined record names the served action and probability.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from stream.bench.harness import service_env
from stream.config import Settings
from stream.joinedlog import read as read_joined
from stream.kafka.apache import KafkaCluster
from stream.state.topicreader import read_state_topic
from tests.integration.conftest import ENGINE_LINE, ENGINE_PARAMS, settings_on, wait_for

pytestmark = pytest.mark.integration

BIN = str(Path(sys.executable).with_name("bandit-stream"))
DOMAINS = [f"dom{i}" for i in range(6)]
WAIT_S = 6.0  # the reward window
SEED = int(os.environ.get("RL_TEST_FAULT_SEED", "11"))
SAME = ("action", "probability", "probabilities", "policy", "policy_version", "variant")


class Instance:
    """One ``bandit-stream run`` process, restarted as often as the test likes."""

    def __init__(self, name: str, s: Settings, root: Path) -> None:
        self.name = name
        self.env = service_env(s)
        self.env["RL_STATE_DIR"] = str(root / f"state-{name}")
        self.env["RL_JOINED_LOG"] = str(root / f"joined-{name}.jsonl")
        self.joined = Path(self.env["RL_JOINED_LOG"])
        self.log_path = root / f"service-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: list[int] = []

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([BIN, "run"], env=self.env, stderr=log)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self._wait(10)

    def stop(self) -> None:
        """SIGTERM: a clean stop, which must exit 0."""
        if self.alive:
            self.signal(signal.SIGTERM)
            assert self._wait(60) == 0, self.tail()

    def _wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.exits.append(code)
        return code

    def restart_if_fenced(self) -> None:
        """After a freeze past the session: a broker that refuses the producer's epoch bump
        (the embedded one) fences it and the service stops non-zero, as it must; its
        supervisor starts it again."""
        time.sleep(1.0)
        if not self.alive:
            assert self._wait(1) != 0 and "(code 90)" in self.tail(), self.tail()
            self.start()

    def tail(self) -> str:
        """Its errors and anything not logged as JSON (a traceback) first, then its last lines."""
        text = self.log_path.read_text(errors="replace")
        worst = [ln for ln in text.splitlines() if '"ERROR"' in ln or not ln.startswith("{")]
        return "errors:\n" + "\n".join(worst[-40:])[-6000:] + "\nlast:\n" + text[-3000:]

    def assignments(self) -> int:
        return self.log_path.read_text(errors="replace").count('"assigned ')

    def settled(self) -> bool:
        """Whether it holds an assignment and is not joining the group again."""
        state = False
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"assigned ' in line:
                state = True
            elif any(w in line for w in ('"revoked ', '"lost ', '"consuming ', "group again")):
                state = False
        return state


def stop_all(instances: list[Instance]) -> None:
    """A clean stop of every instance, one at a time, each once the group has settled
    (the embedded broker never assigns a group again after a member leaves while its join
    is pending: docs/operations.md)."""
    for i, inst in enumerate(instances):
        for o in instances[i:]:
            if o.alive:
                wait_for(o.settled, timeout=60, what=f"{o.name} settled")
        rest = [(o, o.assignments()) for o in instances[i + 1 :] if o.alive]
        inst.stop()
        for o, n in rest:  # reassigned without it
            wait_for(lambda o=o, n=n: o.assignments() > n, timeout=60, what=f"{o.name} moved")


class App:
    """The application: streams contexts, rewards each decision it is shown (after up to
    ``delay_s``, as a user's answer comes later), re-sends a few contexts and rewards."""

    def __init__(self, s: Settings, seed: int, gap_s: float = 0.02, delay_s: float = 1.0) -> None:
        self.s = s
        self.rng = random.Random(seed)
        self.gap_s, self.delay_s = gap_s, delay_s
        self.sent: list[str] = []
        self.copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.rewarded: set[str] = set()
        self.resent = Counter[str]()
        self.producing = threading.Event()
        self.producing.set()
        self._stop = threading.Event()
        self._due: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._contexts, daemon=True),
            threading.Thread(target=self._decisions, daemon=True),
            threading.Thread(target=self._rewards, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _producer(self) -> Producer:
        return Producer(
            {
                "bootstrap.servers": self.s.kafka_bootstrap_servers,
                "linger.ms": 2,
                "enable.idempotence": True,
            }
        )

    def _contexts(self) -> None:
        p, rng = self._producer(), self.rng
        docs: list[tuple[str, bytes]] = []
        i = 0
        while not self._stop.is_set():
            if not self.producing.is_set():
                time.sleep(0.05)
                continue
            dom = DOMAINS[i % len(DOMAINS)]
            x = round(rng.random(), 3)
            doc = orjson.dumps(
                {
                    "event_id": f"c{i}",
                    "domain": dom,
                    "context": {"x": x},
                    "candidates": ["a", "b", "c"],
                }
            )
            p.produce(self.s.topic_contexts, doc, dom.encode())
            self.sent.append(f"c{i}")
            docs.append((dom, doc))
            if len(docs) > 20 and rng.random() < 0.03:  # the application retries one
                dom, again = docs[-rng.randint(2, 20)]
                p.produce(self.s.topic_contexts, again, dom.encode())
                self.resent["contexts"] += 1
            p.poll(0)
            i += 1
            time.sleep(self.gap_s)
        p.flush(10)

    def _decisions(self) -> None:
        c = _reader(self.s.kafka_bootstrap_servers, self.s.topic_decisions)
        rng = random.Random(self.rng.random())
        while not self._stop.is_set():
            for m in c.consume(500, 0.1):
                if m.error():
                    continue
                d = orjson.loads(m.value())
                eid = d["event_id"]
                self.copies[eid].append(d)
                if len(self.copies[eid]) > 1 or rng.random() < 0.1:
                    continue  # one reward per decision shown; a tenth never answered
                pays = d["action"] == ("a" if int(eid[1:]) % 3 else "b")
                doc = orjson.dumps({"event_id": eid, "domain": d["domain"], "reward": float(pays)})
                with self._lock:
                    self._due.append(
                        (time.monotonic() + rng.random() * self.delay_s, d["domain"], doc)
                    )
        c.close()

    def _rewards(self) -> None:
        p, rng = self._producer(), random.Random(self.rng.random())
        done: list[tuple[str, bytes]] = []
        while not self._stop.is_set() or self._due:
            now = time.monotonic()
            with self._lock:
                ready = [r for r in self._due if r[0] <= now]
                self._due = [r for r in self._due if r[0] > now]
            for _, dom, doc in ready:
                p.produce(self.s.topic_rewards, doc, dom.encode())
                self.rewarded.add(orjson.loads(doc)["event_id"])
                done.append((dom, doc))
                if len(done) > 10 and rng.random() < 0.03:  # and retries one of those
                    dom, again = done[-rng.randint(2, 10)]
                    p.produce(self.s.topic_rewards, again, dom.encode())
                    self.resent["rewards"] += 1
            p.poll(0)
            time.sleep(0.01)
            if self._stop.is_set() and not ready:
                break
        p.flush(10)

    @property
    def pending_rewards(self) -> int:
        with self._lock:
            return len(self._due)


def _reader(bootstrap: str, topic: str) -> Consumer:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"app-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "enable.partition.eof": True,
        }
    )
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, q, 0) for q in parts])
    return c


def _read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic``, read to the end of each partition."""
    c = _reader(bootstrap, topic)
    left = set(c.list_topics(topic, timeout=10).topics[topic].partitions)
    out = []
    deadline = time.monotonic() + 60
    while left and time.monotonic() < deadline:
        for m in c.consume(1000, 0.5):
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                left.discard(m.partition())
    c.close()
    assert not left, f"{topic} not read to its end"
    return out


def _first_times(msgs: list[Any]) -> dict[str, float]:
    """Each event id's first record time (a re-sent copy keeps the first's)."""
    out: dict[str, float] = {}
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        eid = orjson.loads(m.value())["event_id"]
        out.setdefault(eid, m.timestamp()[1] / 1000.0)
    return out


def check_invariant(s: Settings, app: App, instances: list[Instance]) -> dict[str, int]:
    """The promises of the module doc; returns what was checked, counted."""
    missing = [e for e in app.sent if e not in app.copies]
    assert not missing, f"{len(missing)} of {len(app.sent)} contexts never decided"
    differ = {
        e: c for e, c in app.copies.items() if len({tuple(str(d[k]) for k in SAME) for d in c}) > 1
    }
    assert not differ, (
        f"{len(differ)} event ids with different decisions: {list(differ.items())[:2]}"
    )
    served = {e: c[0] for e, c in app.copies.items()}

    in_time, late = _in_time(s)
    expected = Counter(served[e]["domain"] for e in in_time)

    records = read_state_topic(s)
    learned: dict[str, int] = {}
    for p in range(s.topic_partitions):
        plan = records.plan(p)
        for rec in plan.records if plan is not None else []:
            roles = rec.snapshot.domains.get(rec.domain)
            if roles:
                learned[rec.domain] = int(roles["served"][0]["n_learned"])
    learned = {d: n for d, n in learned.items() if n}
    assert learned == dict(expected), (learned, dict(expected), _uncredited(s, in_time, instances))

    joined = [r for i in instances if i.joined.exists() for r in read_joined(i.joined)]
    rewarded = [r for r in joined if not r["default_reward"]]
    wrong = [
        r
        for r in rewarded
        if (r["action"], r["probability"])
        != (served[r["event_id"]]["action"], served[r["event_id"]]["probability"])
    ]
    assert not wrong, f"{len(wrong)} rewards credited to another decision: {wrong[:2]}"
    assert {r["event_id"] for r in rewarded} >= in_time  # each one learned, and logged
    return {
        "contexts": len(app.sent),
        "decision copies": sum(len(c) for c in app.copies.values()),
        "rewards in time": len(in_time),
        "rewards late": len(late),
        "contexts re-sent": app.resent["contexts"],
        "rewards re-sent": app.resent["rewards"],
    }


def _uncredited(s: Settings, in_time: set[str], instances: list[Instance]) -> list[Any]:
    """For a failure's message: in-time rewards no joined log credits, with what the
    dead-letter topic says of them."""
    credited = _credited(instances)
    dead: dict[str, list[str]] = defaultdict(list)
    for m in _read_all(s.kafka_bootstrap_servers, s.topic_dead_letter):
        h = {k: v.decode() for k, v in m.headers() or []}
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            dead[orjson.loads(m.value())["event_id"]].append(h.get("error_code", "?"))
    ctx = _first_times(_read_all(s.kafka_bootstrap_servers, s.topic_contexts))
    rew = _first_times(_read_all(s.kafka_bootstrap_servers, s.topic_rewards))
    return [
        (e, dead.get(e), round(ctx[e], 3), round(rew[e] - ctx[e], 2))
        for e in sorted(in_time - credited)[:20]
    ]


def _in_time(s: Settings) -> tuple[set[str], set[str]]:
    """Rewarded event ids: those whose first reward record lies within the window of
    their first context, and the late ones."""
    contexts = _first_times(_read_all(s.kafka_bootstrap_servers, s.topic_contexts))
    rewards = _first_times(_read_all(s.kafka_bootstrap_servers, s.topic_rewards))
    in_time = {e for e, t in rewards.items() if t - contexts[e] <= WAIT_S}
    return in_time, set(rewards) - in_time


def _credited(instances: list[Instance]) -> set[str]:
    joined = [r for i in instances if i.joined.exists() for r in read_joined(i.joined)]
    return {r["event_id"] for r in joined if not r["default_reward"]}


def _settle(s: Settings, app: App, instances: list[Instance]) -> None:
    """Contexts stop; every one is decided, every reward produced and joined; then both
    instances stop cleanly (their final checkpoints learn what is buffered). Windows
    still open then change nothing checked: a decision without a reward learns nothing.
    Joined, not merely produced: after a freeze the group may leave a partition unowned
    for seconds, and a reward still unread at the stop is not lost, only not yet learned."""
    app.producing.clear()
    wait_for(
        lambda: all(e in app.copies for e in list(app.sent)),
        timeout=120,
        what="every context decided",
    )
    wait_for(lambda: app.pending_rewards == 0, timeout=30, what="every reward produced")
    in_time, _ = _in_time(s)
    deadline = time.monotonic() + 90
    while not in_time <= _credited(instances):
        assert time.monotonic() < deadline, (
            f"{len(in_time - _credited(instances))} in-time rewards never joined"
        )
        time.sleep(1.0)
    stop_all(instances)


def run_faults(
    s: Settings,
    tmp: Path,
    faults: list[str],
    seed: int,
    extra: Callable[[str, list[Instance]], None] | None = None,
) -> tuple[App, list[Instance], Counter[str]]:
    """The two instances and the application, and ``faults`` at random moments."""
    rng = random.Random(seed)
    instances = [Instance(n, s, tmp) for n in ("a", "b")]
    for inst in instances:
        inst.start()
    app = App(s, seed)
    done = Counter[str]()
    session_s = s.kafka_session_timeout_ms / 1000.0
    try:
        wait_for(lambda: len(app.copies) > 100, timeout=60, what="traffic decided")
        for fault in faults:
            time.sleep(rng.uniform(1.5, 4.0))
            victim = rng.choice(instances)
            if fault == "kill":
                victim.kill()
                time.sleep(rng.uniform(0.2, 1.5))
                victim.start()
            elif fault == "freeze":  # past the session: the other member takes over
                victim.signal(signal.SIGSTOP)
                time.sleep(session_s + 4.0)
                victim.signal(signal.SIGCONT)
                victim.restart_if_fenced()
            elif fault == "downtime":  # longer than the window: rewards wait in the topic
                stop_all(instances)
                time.sleep(WAIT_S + 3.0)
                for inst in instances:
                    inst.start()
            elif extra is not None:
                extra(fault, instances)
            else:
                raise AssertionError(fault)
            done[fault] += 1
            print(f"fault {fault} of {victim.name} until {time.time():.3f}", flush=True)
        time.sleep(3.0)
        _settle(s, app, instances)
    except BaseException:
        for inst in instances:
            if inst.alive:
                inst.kill()
        print("\n".join(f"--- {i.name}\n{i.tail()}" for i in instances))
        raise
    finally:
        app.close()
    return app, instances, done


def _settings(bootstrap: str, tmp: Path, **extra: Any) -> Settings:
    return settings_on(
        bootstrap,
        tmp,
        topic_partitions=4,
        checkpoint_interval_s=1.0,
        update_interval=1,
        reward_wait_s=WAIT_S,
        reward_grace_s=1.0,
        default_reward=None,
        baseline_policy="linucb",
        log_level="INFO",
        **extra,
    )


def test_every_reward_is_credited_once_to_the_served_decision_whatever_fails(bootstrap, tmp_path):
    s = _settings(bootstrap, tmp_path)
    faults = ["kill", "freeze", "kill", "downtime", "kill", "freeze"]
    # RL_TEST_FAULT_SEED explores other moments (the test's own seed stays fixed in CI).
    app, instances, done = run_faults(s, tmp_path, faults, seed=SEED)
    checked = check_invariant(s, app, instances)
    print(f"faults survived: {dict(done)}; checked: {checked}")
    assert done == Counter(faults)
    assert checked["rewards in time"] > 300 and checked["rewards late"] > 0


class ReadyzProbe:
    """Polls an instance's /readyz every 0.2 s; keeps (monotonic time, status) samples."""

    def __init__(self, inst: Instance) -> None:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            found = re.findall(r"metrics on http://[^:]+:(\d+)/metrics", inst.log_path.read_text())
            port = int(found[-1]) if found else None
            time.sleep(0.1)
        assert port is not None, "the instance serves no /readyz"
        self.url = f"http://127.0.0.1:{port}/readyz"
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    status = r.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0
            self.samples.append((time.monotonic(), status))

    def ready_again_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the first 200 from which every later sample is 200."""
        after = [(ts, st) for ts, st in self.samples if ts >= t]
        last_bad = max((ts for ts, st in after if st != 200), default=None)
        good = [ts for ts, st in after if st == 200 and (last_bad is None or ts > last_bad)]
        return good[0] - t if good else None

    def stable_since(self, t: float, hold_s: float) -> bool:
        """Whether it has been ready for ``hold_s``, at least ``hold_s`` after ``t``."""
        back = self.ready_again_after(t)
        return back is not None and self.samples[-1][0] - (t + back) >= hold_s >= 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


READY_WITHIN_S = 30.0
# Longer than the broker's own failure detection (broker.session.timeout.ms, 9 s) plus
# an election: losing the group coordinator's node must not expire the members' sessions.
# (15 s: on this 2-core machine a coordinator's failover once took longer.)
THREE_NODE_SESSION_MS = 20_000


@pytest.mark.skipif("kafka" not in ENGINE_PARAMS, reason=f"needs Apache Kafka ({ENGINE_LINE})")
def test_three_nodes_the_busiest_node_killed_and_a_frozen_member(tmp_path):
    """Topics with three replicas and min.insync.replicas=2: the node leading most
    contexts and decisions partitions is killed (-9) and restarted; the instances are
    ready again within 30 s; then a member is frozen past its session and another killed.
    Every reward is still credited once, to the decision served."""
    with KafkaCluster(nodes=3) as cluster:
        s = _settings(
            cluster.bootstrap_servers,
            tmp_path,
            kafka_session_timeout_ms=THREE_NODE_SESSION_MS,
            kafka_heartbeat_interval_ms=1_000,
            # Records sent while a leader is away arrive once the cluster has elected a new
            # one (its session, 9 s, and the clients' retries): longer than that.
            reward_quiet_grace_s=20.0,
        )
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
        res = ConfigResource("topic", s.topic_contexts)
        assert admin.describe_configs([res])[res].result()["min.insync.replicas"].value == "2"
        killed: list[int] = []
        back: list[float | None] = []

        def node_kill(fault: str, instances: list[Instance]) -> None:
            leaders = Counter({n: 0 for n in {1, 2, 3} - set(killed)})
            md = admin.list_topics(timeout=10)
            for t in (s.topic_contexts, s.topic_decisions):
                for p in md.topics[t].partitions.values():
                    if p.leader in leaders:
                        leaders[p.leader] += 1
            node = leaders.most_common(1)[0][0]
            killed.append(node)
            probe = ReadyzProbe(instances[0])
            at = time.monotonic()
            cluster.kill_node(node)
            # Ready for 8 s, 15 s on at least: an outage shows within that (failed checkpoints,
            # a rebalance), and one after it would be past the window anyway.
            wait_for(
                lambda: time.monotonic() > at + 15 and probe.stable_since(at, 8.0),
                timeout=READY_WITHIN_S + 10,
                what="ready again",
            )
            back.append(probe.ready_again_after(at))
            probe.stop()
            cluster.start_node(node)
            cluster.wait_ready()
            time.sleep(3)  # the restarted node catches up its replicas

        app, instances, done = run_faults(
            s, tmp_path, ["node", "freeze", "kill"], seed=5, extra=node_kill
        )
        checked = check_invariant(s, app, instances)
        print(f"faults survived: {dict(done)}; ready again after {back} s; checked: {checked}")
        assert all(b is not None and b <= READY_WITHIN_S for b in back), back

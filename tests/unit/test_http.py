"""The health endpoints answer GET and HEAD only and close idle connections."""

from __future__ import annotations

import http.client
import socket
import time

from prometheus_client import CollectorRegistry

from stream.observe import http as http_mod
from stream.observe.http import serve


def _server(monkeypatch, idle_s: float = 10.0):
    monkeypatch.setattr(http_mod._Quiet, "timeout", idle_s)
    server, port = serve(
        "127.0.0.1", 0, CollectorRegistry(), lambda: (True, "ok\n"), lambda: (False, "no\n")
    )
    return server, port


def test_only_get_and_head_are_answered(monkeypatch):
    server, port = _server(monkeypatch)
    try:
        for method, path, status in [
            ("GET", "/healthz", 200),
            ("HEAD", "/healthz", 200),
            ("GET", "/readyz", 503),
            ("POST", "/healthz", 405),
            ("DELETE", "/readyz", 405),
            ("PUT", "/metrics", 405),
        ]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == status, (method, path)
            if status == 405:
                assert resp.getheader("Allow") == "GET, HEAD"
            conn.close()
    finally:
        server.shutdown()


def test_an_idle_connection_is_closed(monkeypatch):
    server, port = _server(monkeypatch, idle_s=0.5)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        time.sleep(1.5)  # says nothing
        sock.settimeout(5)
        assert sock.recv(100) == b""  # the server closed it
        sock.close()
    finally:
        server.shutdown()

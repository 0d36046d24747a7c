"""SIGTERM / SIGINT: the first asks for a clean stop, a second exits at once."""

from __future__ import annotations

import os
import signal

import pytest

from stream import signals


class Target:
    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_stops_cleanly_second_exits_at_once(monkeypatch, sig):
    exits: list[int] = []
    monkeypatch.setattr(signals.os, "_exit", exits.append)
    target = Target()
    with signals.stop_on_signals(target):
        os.kill(os.getpid(), sig)  # Python runs the handler before the next bytecode
        assert target.stops == 1 and exits == []
        os.kill(os.getpid(), sig)
        assert exits == [128 + sig]
    assert signal.getsignal(sig) is not None  # the previous handler is back

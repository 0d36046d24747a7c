"""Reproducible builds: the locks pin every dependency pyproject.toml asks for, at a version
it allows, with hashes; the image and the scripts install from them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(lock: str) -> dict[str, str]:
    text = (ROOT / "requirements" / lock).read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$", text, re.M))
    assert pins and text.count("==") == len(pins)
    assert text.count("--hash=sha256:") >= len(pins)  # every pin hashed
    return {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}


def _wanted(extra: str | None) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for name in [extra] if extra else []:
        for r in map(Requirement, PROJECT["optional-dependencies"][name]):
            if r.name == PROJECT["name"]:  # bandit-stream[bench,local]
                reqs += [
                    Requirement(x) for e in r.extras for x in PROJECT["optional-dependencies"][e]
                ]
            else:
                reqs.append(r)
    return reqs


@pytest.mark.parametrize(
    ("lock", "extra"), [("service.lock", None), ("local.lock", "local"), ("test.lock", "test")]
)
def test_each_lock_pins_every_dependency_within_its_bounds(lock, extra):
    pins = _pins(lock)
    for r in _wanted(extra):
        name = re.sub(r"[-_.]+", "-", r.name).lower()
        assert name in pins, f"{lock} lacks {r.name}: run scripts/lock"
        assert r.specifier.contains(pins[name], prereleases=True), (lock, str(r), pins[name])


def test_every_runtime_dependency_has_an_upper_bound():
    unbounded = [r for r in PROJECT["dependencies"] if not re.search(r"<|==", r)]
    assert not unbounded, unbounded


def test_the_image_and_the_scripts_install_from_the_locks():
    docker = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/service.lock" in docker
    assert "pip install --no-deps ." in docker
    venv = (ROOT / "scripts" / "_venv.sh").read_text()
    assert "--require-hashes" in venv and "requirements/${VENV_EXTRA:-service}.lock" in venv
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")

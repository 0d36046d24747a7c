"""The Helm chart's values: what each renders to, in every value set of helm/bandit-stream/ci
(ServiceMonitor selection, PromQL that parses, memory settings from the container limit, the
compiled-kernel cache, the keys users of well-kept charts expect) and the generated README."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import promql_parser
import pytest

from stream.config import Settings
from tests.unit.test_deploy import CHART, VALUES, by_kind, container, render

ROOT = Path(__file__).resolve().parents[2]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", sorted(VALUES))
def test_the_service_monitor_selects_exactly_one_service(name):
    docs = render({**VALUES[name], "serviceMonitor": {"enabled": True}})
    services = by_kind(docs, "Service")
    assert services
    for sm in by_kind(docs, "ServiceMonitor"):
        selector = sm["spec"]["selector"]["matchLabels"]
        chosen = [
            s["metadata"]["name"] for s in services if _selects(selector, s["metadata"]["labels"])
        ]
        assert len(chosen) == 1, (name, chosen)
        assert not chosen[0].endswith("-headless")


def _rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs = render({**values, "prometheusRule": {"enabled": True}})
    (rule,) = by_kind(docs, "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


# Each alert, the metric its rule reads (with the service's own alert label, or None), and
# the setting its threshold comes from as the pod sees it.
ALERTS = {
    "BanditStreamLatency": ("bandit_alert_active", "latency", "RL_LATENCY_THRESHOLD_MS"),
    "BanditStreamMemory": ("bandit_alert_active", "memory", "RL_MEMORY_THRESHOLD_MB"),
    "BanditStreamErrorRate": ("bandit_alert_active", "error_rate", "RL_ERROR_RATE_THRESHOLD"),
    "BanditStreamCheckpointStale": (
        "bandit_checkpoint_age_seconds",
        None,
        "RL_CHECKPOINT_INTERVAL_S",
    ),
}
# The alerts on the service's counters and Prometheus' own `up`: no setting in them.
PLAIN_ALERTS = {
    "BanditStreamDown": "up",
    "BanditStreamLag": "bandit_consumer_lag",
    "BanditStreamDeadLetters": "bandit_rejected",
    "BanditStreamRebalanceStorm": "bandit_rebalances",
}


def _pod_setting(data: dict[str, str], name: str) -> str:
    """The setting as the pod sees it: the ConfigMap's value, else the product's default."""
    if name in data:
        return data[name]
    default = Settings.model_fields[name.removeprefix("RL_").lower()].default
    return f"{default:g}"


@pytest.mark.parametrize("name", sorted(VALUES))
def test_every_rendered_rule_is_valid_promql(name):
    """Every value set renders the four alerts (not none: a loop over no rules proves
    nothing), each valid PromQL on a metric the service exports, its threshold the pod's."""
    from stream.observe.metrics import Metrics

    metrics = Metrics(Settings())
    exported = {family.name for family in metrics.registry.collect()}
    rules, data = _rules(VALUES[name]), _config(VALUES[name])
    assert rules, f"{name}: no rule rendered"
    by_alert = {r["alert"]: r for r in rules}
    assert len(by_alert) == len(rules)  # no alert twice
    assert set(by_alert) == set(ALERTS) | set(PLAIN_ALERTS)
    metrics.registry.register(_GroupCounts())
    exported = {family.name for family in metrics.registry.collect()}
    for alert, metric in PLAIN_ALERTS.items():
        rule = by_alert[alert]
        promql_parser.parse(rule["expr"])  # raises on invalid PromQL
        assert metric in rule["expr"] and (metric == "up" or metric in exported), rule["expr"]
        assert rule["for"] and rule["labels"]["severity"] in ("warning", "critical")
    for alert, (metric, label, setting) in ALERTS.items():
        rule = by_alert[alert]
        expr = promql_parser.parse(rule["expr"])  # raises on invalid PromQL
        assert isinstance(expr, promql_parser.BinaryExpr), rule["expr"]
        selector = expr.lhs
        assert isinstance(selector, promql_parser.VectorSelector), rule["expr"]
        assert selector.name == metric and metric in exported
        matchers = {(m.name, m.value) for m in selector.matchers.matchers}
        assert matchers == ({("alert", label)} if label else set()), rule["expr"]
        assert label is None or label in metrics.alerts
        assert rule["for"] and rule["labels"]["severity"] in ("warning", "critical")
        want = _pod_setting(data, setting)
        shown = rule["expr"] if label is None else rule["annotations"]["summary"]
        assert re.search(rf"(?<![\d.]){re.escape(want)}(?![\d.])", shown), (alert, want, shown)


class _GroupCounts:
    """The membership's collector, as a running service registers it."""

    def collect(self):
        from stream.state.membership import Membership

        fake = type("M", (), {})()
        fake.rebalance = type("R", (), {"assignments": 0, "revocations": 0, "losses": 0})()
        fake.ownership = type(
            "O", (), {"restored_from_local": 0, "restored_from_topic": 0, "restored_empty": 0}
        )()
        fake.rejoins = 0
        return Membership.collect(fake)  # type: ignore[arg-type]


def test_compose_alerts_are_the_charts():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "alerts"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


def test_the_parser_really_rejects_what_the_chart_once_rendered():
    with pytest.raises(ValueError):
        promql_parser.parse("bandit_checkpoint_age_seconds > 10 * ")


@pytest.mark.parametrize(
    "config", [{"RL_CHECKPOINT_INTERVAL_S": None}, {"RL_CHECKPOINT_INTERVAL_S": "5"}]
)
def test_the_checkpoint_rule_follows_the_setting_or_its_default(config):
    (stale,) = [
        r for r in _rules({"config": config}) if r["alert"] == "BanditStreamCheckpointStale"
    ]
    promql_parser.parse(stale["expr"])
    want = config["RL_CHECKPOINT_INTERVAL_S"] or "30"
    assert stale["expr"].endswith(f"> 10 * {want}")


def test_the_charts_fallbacks_are_the_products_defaults():
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    (pairs,) = re.findall(r'\$defaults := dict ((?:"[A-Z_]+" "[^"]+" ?)+)', text)
    fallbacks = dict(re.findall(r'"([A-Z_]+)" "([^"]+)"', pairs))
    fields = Settings.model_fields
    for name, value in fallbacks.items():
        default = fields[name.removeprefix("RL_").lower()].default
        assert float(value) == float(default), name


def _config(values: dict[str, Any]) -> dict[str, str]:
    docs = render(values)
    return next(c for c in by_kind(docs, "ConfigMap") if "RL_KAFKA_GROUP_ID" in c["data"])["data"]


@pytest.mark.parametrize(
    ("limit", "mb"),
    [("1Gi", 1024), ("1500Mi", 1500), ("2G", 2000 * 10**6 // 2**20), ("3221225472", 3072)],
)
def test_memory_settings_come_from_the_container_limit(limit, mb):
    data = _config({"resources": {"limits": {"memory": limit}}})
    assert int(data["RL_MEMORY_LIMIT_MB"]) == int(mb * 0.85)
    assert int(data["RL_MEMORY_THRESHOLD_MB"]) == int(mb * 0.75)
    Settings(memory_limit_mb=data["RL_MEMORY_LIMIT_MB"])  # a value the product accepts


def test_the_default_limit_trims_and_alerts_before_the_kernel_kills():
    data = _config({})
    assert int(data["RL_MEMORY_THRESHOLD_MB"]) < int(data["RL_MEMORY_LIMIT_MB"]) < 1024
    (mem,) = [r for r in _rules({}) if r["alert"] == "BanditStreamMemory"]
    assert data["RL_MEMORY_THRESHOLD_MB"] in mem["annotations"]["summary"]


def test_set_memory_settings_win_and_no_limit_derives_nothing():
    data = _config({"config": {"RL_MEMORY_LIMIT_MB": "900", "RL_MEMORY_THRESHOLD_MB": "600"}})
    assert (data["RL_MEMORY_LIMIT_MB"], data["RL_MEMORY_THRESHOLD_MB"]) == ("900", "600")
    data = _config({"resources": {"limits": None, "requests": {"memory": "1Gi"}}})
    assert "RL_MEMORY_LIMIT_MB" not in data and "RL_MEMORY_THRESHOLD_MB" not in data
    with pytest.raises(helm_python.HelmError, match="limits.memory"):
        render({"resources": {"limits": {"memory": "lots"}}})


def test_the_images_compiled_kernels_are_copied_where_numba_can_use_them():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (baked,) = set(re.findall(r"NUMBA_CACHE_DIR=(\S+)", dockerfile))
    docs = render({})
    pod = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    c = container(docs, "StatefulSet")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert init["image"] == c["image"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert init["command"][-1] == baked and env["NUMBA_CACHE_DIR"] in init["command"][2]
    mount = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert env["NUMBA_CACHE_DIR"].startswith(mount["tmp"] + "/")
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["tmp"] == mount["tmp"]
    pod = by_kind(render({"numbaCache": {"seedFrom": ""}}), "StatefulSet")[0]["spec"]
    assert "initContainers" not in pod["template"]["spec"]


def test_the_keys_users_expect_land_where_they_belong():
    values = VALUES["extras"]
    docs = render(values)
    (sts,) = by_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]
    spec = pod["spec"]
    c = container(docs, "StatefulSet")
    assert c["image"] == f"registry.example.com/bandit-stream@{values['image']['digest']}"
    assert all(d["metadata"]["labels"]["cost-center"] == "ranking" for d in docs)
    assert c["livenessProbe"]["timeoutSeconds"] == 5 and c["readinessProbe"]["timeoutSeconds"] == 3
    (policy,) = by_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["from"] == values["networkPolicy"]["metricsFrom"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    egress = policy["spec"]["egress"]
    assert {"port": 53, "protocol": "UDP"} in egress[0]["ports"] and egress[1:] == values[
        "networkPolicy"
    ]["extraEgress"]
    assert spec["imagePullSecrets"] == [{"name": "registry-creds"}, {"name": "other-creds"}]
    (sa,) = by_kind(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == values["serviceAccount"]["annotations"]
    assert {"name": "TZ", "value": "UTC"} in c["env"]
    assert values["extraEnvFrom"][0] in c["envFrom"]
    assert values["extraVolumes"][0] in spec["volumes"]
    assert values["extraVolumeMounts"][0] in c["volumeMounts"]
    assert pod["metadata"]["labels"]["team"] == "ranking"
    assert "team" not in sts["spec"]["selector"]["matchLabels"]
    assert pod["metadata"]["annotations"]["example.com/owner"] == "ranking"
    assert spec["topologySpreadConstraints"] == values["topologySpreadConstraints"]
    assert spec["priorityClassName"] == "high-priority"
    assert spec["terminationGracePeriodSeconds"] == 120
    # One existing claim: no claim per pod, each pod in its own directory of it.
    assert "volumeClaimTemplates" not in sts["spec"]
    state = next(v for v in spec["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"]["claimName"] == "bandit-state"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "state")
    assert mount["subPathExpr"] == "$(RL_INSTANCE_ID)"
    assert any(e["name"] == "RL_INSTANCE_ID" for e in c["env"])


def test_the_schema_refuses_unknown_keys():
    with pytest.raises(helm_python.HelmError, match="additional"):
        render({"extraEnvs": []})


def test_the_chart_readme_is_current_and_lists_every_value():
    path = ROOT / "scripts" / "chart-readme"
    loader = importlib.machinery.SourceFileLoader("chart_readme", str(path))
    spec = importlib.util.spec_from_loader("chart_readme", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run scripts/chart-readme"
    text = (CHART / "README.md").read_text()
    for key in (
        "extraEnv",
        "podLabels",
        "serviceAccount.annotations",
        "image.digest",
        "persistence.existingClaim",
        "keda.pollingInterval",
        "keda.cooldownPeriod",
        "keda.minReplicaCount",
        "terminationGracePeriodSeconds",
        "numbaCache.seedFrom",
    ):
        assert f"| `{key}` |" in text, key

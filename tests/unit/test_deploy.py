"""Deploy artefacts, validated offline: the Helm chart (lint, render, Kubernetes schemas),
docker-compose.yml (the compose binary) and the Dockerfile; every RL_* name they use is
one the settings object accepts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import compose
import helm_python
import kubernetes_validate
import pytest
import yaml

from stream.config import Settings, env_name
from stream.kafka.apache import KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "bandit-stream"
K8S = "1.37.0"
VALUES = {
    "defaults": {},
    **{
        p.stem.removesuffix("-values"): yaml.safe_load(p.read_text())
        for p in (CHART / "ci").glob("*.yaml")
    },
}
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values, name="bs", namespace="bandits")
    docs = []
    for path, text in out.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_the_value_sets_cover_the_required_modes():
    assert set(VALUES) >= {"defaults", "deployment", "keda", "sasl", "servicemonitor", "extras"}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_chart_lints_clean(name):
    report = helm_python.lint(str(CHART), VALUES[name], strict=True, kube_version=f"v{K8S}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", sorted(VALUES))
def test_every_rendered_manifest_validates_strictly(name):
    docs = render(VALUES[name])
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            # kubernetes-validate ships no CRD schemas: check their structure here.
            assert doc["metadata"]["name"] and isinstance(doc["spec"], dict)
            continue
        kubernetes_validate.validate(doc, K8S, strict=True)


def container(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (workload,) = by_kind(docs, kind)
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def test_defaults_statefulset_with_pvc_probes_static_membership_and_no_root():
    docs = render({})
    (sts,) = by_kind(docs, "StatefulSet")
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    c = container(docs, "StatefulSet")
    env = {e["name"]: e for e in c["env"]}
    assert env["RL_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # state restore
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert by_kind(docs, "PodDisruptionBudget")[0]["spec"]["maxUnavailable"] == 1
    cm = by_kind(docs, "ConfigMap")[0]["data"]
    assert cm["RL_KAFKA_BOOTSTRAP_SERVERS"] and all(isinstance(v, str) for v in cm.values())
    assert c["resources"]["requests"]["memory"]


def test_deployment_mode_without_persistence():
    docs = render(VALUES["deployment"])
    assert not by_kind(docs, "StatefulSet") and by_kind(docs, "Deployment")
    vols = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "state", "emptyDir": {}} in vols


def test_keda_scales_on_both_inputs_lag_never_past_the_partitions():
    docs = render(VALUES["keda"])
    (so,) = by_kind(docs, "ScaledObject")
    spec = so["spec"]
    assert spec["maxReplicaCount"] <= VALUES["keda"]["keda"]["partitions"]
    assert (spec["minReplicaCount"], spec["pollingInterval"], spec["cooldownPeriod"]) == (
        1,
        30,
        300,
    )
    assert [t["metadata"]["topic"] for t in spec["triggers"]] == [
        "bandit.contexts",
        "bandit.rewards",
    ]
    assert all(t["type"] == "kafka" and "authenticationRef" not in t for t in spec["triggers"])
    assert not by_kind(docs, "TriggerAuthentication")
    assert "replicas" not in by_kind(docs, "Deployment")[0]["spec"]  # KEDA owns it
    with pytest.raises(helm_python.HelmError, match="partitions"):
        render({"keda": {"enabled": True, "maxReplicaCount": 8, "partitions": 4}})


@pytest.mark.parametrize("existing", ["", "kafka-creds"])
def test_keda_on_a_sasl_cluster_authenticates_as_the_service(existing):
    values = {
        **VALUES["sasl"],
        "keda": {"enabled": True, "partitions": 4, "pollingInterval": 10},
        "sasl": {**VALUES["sasl"]["sasl"], "existingSecret": existing},
    }
    docs = render(values)
    (so,) = by_kind(docs, "ScaledObject")
    (auth,) = by_kind(docs, "TriggerAuthentication")
    assert so["spec"]["pollingInterval"] == 10
    for t in so["spec"]["triggers"]:
        assert t["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert (t["metadata"]["sasl"], t["metadata"]["tls"]) == ("scram_sha512", "enable")
    env = {e["name"]: e for e in container(docs, "StatefulSet")["env"]}
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    # The password from the Secret the pod reads it from, the user name from the pod's env.
    pod_ref = env["RL_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (refs["password"]["name"], refs["password"]["key"]) == (pod_ref["name"], pod_ref["key"])
    assert refs["ca"] == {"parameter": "ca", "name": "kafka-ca", "key": "ca.crt"}
    (user,) = auth["spec"]["env"]
    assert user["name"] == "RL_KAFKA_SASL_USERNAME" and user["containerName"] == "bandit-stream"
    assert user["name"] in env


def test_sasl_password_lives_in_a_secret_only():
    docs = render(VALUES["sasl"])
    password = VALUES["sasl"]["sasl"]["password"]
    (secret,) = by_kind(docs, "Secret")
    assert secret["data"]["password"]
    assert password not in json.dumps(by_kind(docs, "ConfigMap"))
    env = {e["name"]: e for e in container(docs, "StatefulSet")["env"]}
    assert (
        env["RL_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
        == secret["metadata"]["name"]
    )
    assert env["RL_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    # An existing Secret is used instead of rendering one.
    docs = render({"sasl": {"enabled": True, "username": "u", "existingSecret": "kafka-creds"}})
    assert not by_kind(docs, "Secret")
    env = {e["name"]: e for e in container(docs, "StatefulSet")["env"]}
    assert env["RL_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "kafka-creds"


def test_monitoring_objects_and_the_dashboard():
    docs = render(VALUES["servicemonitor"])
    assert by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["path"] == "/metrics"
    rules = by_kind(docs, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
    assert {"BanditStreamLatency", "BanditStreamMemory", "BanditStreamErrorRate"} <= {
        r["alert"] for r in rules
    }
    dash = next(
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("dashboard")
    )
    panels = json.loads(dash["data"]["bandit-stream.json"])["panels"]
    titles = " ".join(p["title"] for p in panels).lower()
    for word in ("decisions", "reward", "latency", "pending", "lag", "dead letters", "alerts"):
        assert word in titles


def compose_binary() -> Path:
    return Path(compose.__file__).parent / "docker-compose"


def test_docker_compose_file_is_valid_and_the_binary_really_checks(tmp_path):
    ok = subprocess.run(
        [str(compose_binary()), "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  x:\n    image: 3\n    depends_on: {y: {condition: nope}}\n")
    broken = subprocess.run(
        [str(compose_binary()), "-f", str(bad), "config", "--quiet"], capture_output=True, text=True
    )
    assert broken.returncode != 0


def test_compose_runs_kafka_topics_service_traffic_prometheus_and_grafana():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"kafka", "topics", "bandit-stream", "simulator", "prometheus", "grafana"} <= set(
        services
    )
    # The Apache Kafka the tests and benchmarks run on is the one the demo stack deploys.
    assert (
        services["kafka"]["image"] == services["topics"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    )
    env = services["kafka"]["environment"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1
    assert "cleanup.policy=compact" in services["topics"]["command"][0]


def accepted_names() -> set[str]:
    return {env_name(f) for f in Settings.model_fields}


def test_every_rl_name_in_the_chart_and_compose_is_a_setting():
    accepted = accepted_names()
    texts = [
        p.read_text()
        for p in CHART.rglob("*")
        if p.is_file() and p.suffix in (".yaml", ".tpl", ".txt")
    ]
    texts.append((ROOT / "docker-compose.yml").read_text())
    texts.append((ROOT / "Dockerfile").read_text())
    used = set()
    for t in texts:
        used |= set(re.findall(r"\b(?:ENABLE_RL|RL)_[A-Z0-9_]+\b", t))
    used = {u for u in used if not u.startswith("RL_TEST_")}
    assert used and used <= accepted, sorted(used - accepted)


def test_dockerfile_is_multi_stage_non_root_with_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM python:3\.11-slim", text, re.M)) == 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert re.search(r'^ENTRYPOINT \["bandit-stream"\]', text, re.M)
    assert re.search(r'^CMD \["run"\]', text, re.M)
    assert "/healthz" in text and re.search(r"^HEALTHCHECK", text, re.M)
    assert re.search(r"^VOLUME", text, re.M)
    assert (ROOT / ".dockerignore").exists()


@pytest.mark.parametrize(("config", "grace"), [({}, 45), ({"RL_SHUTDOWN_TIMEOUT_S": "60"}, 75)])
def test_the_grace_period_follows_the_shutdown_timeout(config, grace):
    docs = render({"config": {"RL_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", **config}})
    pod = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == grace

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import Settings, env_name, load_settings, settings_env, unknown_env_vars
from stream.errors import ConfigError
from stream.kafka.clients import consumer_config, producer_config

ALL_NAMES = """RL_KAFKA_BOOTSTRAP_SERVERS RL_KAFKA_GROUP_ID RL_KAFKA_SESSION_TIMEOUT_MS
RL_KAFKA_HEARTBEAT_INTERVAL_MS RL_KAFKA_FETCH_WAIT_MAX_MS RL_KAFKA_SECURITY_PROTOCOL
RL_KAFKA_SASL_MECHANISM RL_KAFKA_SASL_USERNAME RL_KAFKA_SASL_PASSWORD RL_KAFKA_SSL_CA_LOCATION
RL_KAFKA_EXTRA RL_TOPIC_CONTEXTS RL_TOPIC_REWARDS RL_TOPIC_DECISIONS RL_TOPIC_METRICS
RL_TOPIC_DEAD_LETTER RL_TOPIC_STATE RL_REWARD_WAIT_S RL_DEFAULT_REWARD RL_REWARD_MIN
RL_REWARD_MAX RL_MAX_PENDING RL_MAX_DOMAINS RL_MAX_CANDIDATES RL_POLICY RL_BASELINE_POLICY
RL_SHADOW_POLICIES RL_BATCH_SIZE RL_UPDATE_INTERVAL RL_STATE_DIR RL_CHECKPOINT_INTERVAL_S
RL_METRICS_PORT RL_METRICS_INTERVAL_S RL_LOG_LEVEL RL_LOG_FORMAT RL_DR_ALPHA RL_DR_LEARNING_RATE
RL_DR_LR_DECAY RL_DR_MAX_WEIGHT RL_DR_MAX_HISTORY RL_OT_MAX_DEPTH RL_OT_MIN_SPLIT
RL_OT_SPLIT_THRESHOLD RL_OT_MAX_NODES RL_MEMORY_LIMIT_MB RL_MEMORY_CLEANUP_INTERVAL
RL_ROLLOUT_PERCENTAGE RL_ROLLOUT_DOMAINS RL_LATENCY_THRESHOLD_MS RL_MEMORY_THRESHOLD_MB
RL_ERROR_RATE_THRESHOLD ENABLE_RL_ADVANCED ENABLE_RL_MONITORING ENABLE_RL_SHADOW_EVAL""".split()


def test_every_documented_name_is_a_setting():
    known = {env_name(f) for f in Settings.model_fields}
    assert set(ALL_NAMES) <= known


ROOT = Path(__file__).resolve().parents[2]
SETTINGS_DOCS = (ROOT / "README.md", ROOT / "docs" / "configuration.md")


def _documented_defaults() -> dict[str, str]:
    """``{variable: default}`` from the settings tables of the README and
    docs/configuration.md, where a row names its variables and defaults one for one
    (``RL_A`` / ``_B`` | ``1`` / ``2``)."""
    import re

    from stream.config import known_env_names

    known = known_env_names()
    out: dict[str, str] = {}
    lines = [ln for doc in SETTINGS_DOCS for ln in doc.read_text().splitlines()]
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z_]+)`", cells[0])
        defaults = [d.strip().strip("`") for d in cells[1].split(" / ")]
        if not names or len(names) != len(defaults):
            continue
        full = []
        for name in names:
            if name.startswith("_"):  # a suffix of the first name's prefix
                parts = names[0].split("_")
                name = next(
                    "_".join(parts[:i]) + name
                    for i in range(len(parts) - 1, 0, -1)
                    if "_".join(parts[:i]) + name in known
                )
            full.append(name)
        out.update(zip(full, defaults, strict=True))
    return out


def _same(documented: str, actual: str) -> bool:
    documented = documented.removesuffix(" s")
    try:
        return float(documented) == float(actual)
    except ValueError:
        return documented == actual


def test_the_documentation_states_the_actual_defaults():
    from stream.config import settings_env

    actual = settings_env(load_settings())
    documented = _documented_defaults()
    words = ("–", "every domain")  # unset: nothing to compare
    compared = {k: v for k, v in documented.items() if k in actual and v not in words}
    assert len(compared) >= 40, sorted(compared)  # the parser read the tables
    wrong = {k: (v, actual[k]) for k, v in compared.items() if not _same(v, actual[k])}
    assert not wrong, f"documented default vs actual: {wrong}"


def test_every_setting_is_documented():
    from stream.config import known_env_names

    text = (ROOT / "docs" / "configuration.md").read_text()
    named = set(_documented_defaults())  # table rows, suffixes expanded
    missing = [n for n in known_env_names() if n not in named and f"`{n}" not in text]
    assert not missing, sorted(missing)


def test_the_readme_reads_in_five_minutes():
    # River's and Quix Streams' READMEs: 11-19k characters; the rest lives in docs/.
    assert len((ROOT / "README.md").read_text()) <= 15_000


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("RL_BATCH_SIZE", "77")
    monkeypatch.setenv("RL_DEFAULT_REWARD", "none")
    monkeypatch.setenv("RL_ROLLOUT_DOMAINS", "a, b,c")
    monkeypatch.setenv("RL_KAFKA_EXTRA", '{"client.id": "x", "socket.keepalive.enable": true}')
    monkeypatch.setenv("ENABLE_RL_SHADOW_EVAL", "true")
    monkeypatch.setenv("RL_KAFKA_SASL_PASSWORD", "hunter2")
    s = load_settings()
    assert s.batch_size == 77 and s.default_reward is None
    assert s.rollout_domains == ["a", "b", "c"]
    assert s.enable_rl_shadow_eval is True
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    conf = consumer_config(s)
    assert conf["client.id"] == "x" and conf["sasl.password"] == "hunter2"
    assert conf["enable.auto.offset.store"] is False
    assert producer_config(s)["enable.idempotence"] is True
    assert "group.instance.id" not in conf
    monkeypatch.setenv("RL_INSTANCE_ID", "bandit-stream-0")
    assert consumer_config(load_settings())["group.instance.id"] == "bandit-stream-0"


@pytest.mark.parametrize(
    "name,value",
    [
        ("RL_BATCH_SIZE", "lots"),
        ("RL_BATCH_SIZE", "0"),
        ("RL_LOG_FORMAT", "xml"),
        ("RL_REWARD_WAIT_S", "-1"),
        ("RL_BASELINE_POLICY", "nonsense"),
        ("RL_KAFKA_EXTRA", "[1]"),
        ("RL_ROLLOUT_PERCENTAGE", "1.5"),
        ("ENABLE_RL_MONITORING", "perhaps"),
        ("RL_DEFAULT_REWARD", "inf"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert name in str(e.value)


def test_cross_field_checks(monkeypatch):
    monkeypatch.setenv("RL_REWARD_MIN", "2")
    with pytest.raises(ConfigError, match="RL_REWARD_MIN"):
        load_settings()


def test_advanced_policy_must_exist_when_enabled(monkeypatch):
    monkeypatch.setenv("ENABLE_RL_ADVANCED", "1")
    monkeypatch.setenv("RL_POLICY", "nope")
    with pytest.raises(ConfigError, match="RL_POLICY"):
        load_settings()


def test_unknown_rl_variables_are_reported(monkeypatch):
    monkeypatch.setenv("RL_BATCHSIZE", "5")
    assert unknown_env_vars() == ["RL_BATCHSIZE"]


def test_settings_env_rebuilds_the_same_settings(monkeypatch):
    s = load_settings(
        shadow_policies=["linucb"],
        rollout_domains=["a", "b"],
        kafka_extra={"fetch.min.bytes": 10, "check.crcs": True},
        default_reward=None,
        kafka_sasl_password="pw",
        batch_size=77,
        enable_rl_advanced=True,
        reward_wait_s=12.5,
    )
    env = settings_env(s)
    assert set(env) <= {env_name(f) for f in Settings.model_fields}
    assert env["RL_DEFAULT_REWARD"] == "none" and "RL_INSTANCE_ID" not in env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert load_settings() == s


def test_the_benchmarks_service_runs_with_the_users_settings(monkeypatch):
    from stream.bench.harness import service_env

    monkeypatch.setenv("RL_POLICY", "linucb")
    monkeypatch.setenv("RL_TEST_BOOTSTRAP_SERVERS", "elsewhere:9092")  # not a setting
    env = service_env(load_settings(batch_size=123, topic_contexts="bench.contexts"))
    assert env["RL_POLICY"] == "linucb" and env["RL_BATCH_SIZE"] == "123"
    assert env["RL_TOPIC_CONTEXTS"] == "bench.contexts"
    assert env["RL_METRICS_PORT"] == "0" and "RL_TEST_BOOTSTRAP_SERVERS" not in env


def test_the_session_leaves_a_decision_at_least_a_second_to_be_delivered():
    with pytest.raises(ConfigError, match="RL_KAFKA_HEARTBEAT_INTERVAL_MS must be at least 1000"):
        load_settings(kafka_session_timeout_ms=1500, kafka_heartbeat_interval_ms=1000)

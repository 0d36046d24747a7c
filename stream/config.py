"""The one Settings object: the only code that reads environment variables.

Every variable is ``RL_<FIELD>`` except the three feature switches, which are named
``ENABLE_RL_*`` as the product's interface requires. A bad value stops the service at
start with a message naming the variable (:func:`load_settings`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from policies.knobs import Knob
from stream.errors import ConfigError

ENV_PREFIX = "RL_"
_SWITCHES = ("ENABLE_RL_ADVANCED", "ENABLE_RL_MONITORING", "ENABLE_RL_SHADOW_EVAL")

CommaList = Annotated[list[str], NoDecode]


# Choices are matched without regard to case (RL_LOG_LEVEL=info).
_UPPER_CHOICES = ("log_level", "kafka_security_protocol", "kafka_sasl_mechanism")
_LOWER_CHOICES = (
    "log_format",
    "on_processing_error",
    "policy",
    "baseline_policy",
)


def _check_policy(name: str) -> None:
    """Every policy name is checked at load, whatever the switches that would use it."""
    from policies.registry import POLICIES

    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")


def _switch(name: str, default: bool) -> Any:
    return Field(default, validation_alias=AliasChoices(name, name.lower()))


class _Settings(BaseSettings):
    """All of bandit-stream's configuration. Defaults suit production Kafka."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, populate_by_name=True, extra="forbid")

    # --- Kafka client --------------------------------------------------------------------
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_group_id: str = "bandit-stream"
    # Static group membership (group.instance.id): a restarted instance keeps its partitions
    # without a rebalance. The Helm chart sets it from the pod name.
    instance_id: str | None = None
    kafka_session_timeout_ms: int = Field(45_000, ge=1_000)
    kafka_heartbeat_interval_ms: int = Field(3_000, ge=100)
    kafka_fetch_wait_max_ms: int = Field(500, ge=0)
    # How long a command waits for a broker's first answer before it exits 3.
    kafka_connect_timeout_s: float = Field(15.0, gt=0)
    # In the group this long without an assignment: a warning and /readyz say why.
    assignment_timeout_s: float = Field(30.0, gt=0)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None
    ) = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None
    # Further librdkafka properties as a JSON object; applied last, so they win.
    kafka_extra: dict[str, str | int | float | bool] = Field(default_factory=dict)

    # --- Topics --------------------------------------------------------------------------
    topic_contexts: str = "bandit.contexts"
    topic_rewards: str = "bandit.rewards"
    topic_decisions: str = "bandit.decisions"
    topic_metrics: str = "bandit.metrics"
    topic_dead_letter: str = "bandit.dead-letter"
    topic_state: str = "bandit.state"
    # Partitions for topics the service creates itself (contexts and rewards share it).
    topic_partitions: int = Field(4, ge=1, le=1024)

    # --- Join ----------------------------------------------------------------------------
    reward_wait_s: float = Field(3600.0, gt=0)
    # A number, or "none" to drop expired decisions unlearned.
    default_reward: float | None = 0.0
    reward_min: float = 0.0
    reward_max: float = 1.0
    max_pending: int = Field(100_000, ge=1)
    # Pending decisions of one domain (unset: RL_MAX_PENDING); a domain at its bound, or
    # the fullest domain when the total is reached, gives up its own oldest.
    max_pending_per_domain: int | None = Field(None, ge=1)
    # How long a reward whose decision is not (yet) known waits for its context: covers a
    # reward read before its context, e.g. when a restart replays both topics.
    reward_early_wait_s: float = Field(60.0, ge=0)
    # Windows close in stream time (record timestamps): this much later than a deadline,
    # for rewards that arrive out of timestamp order (several producers' clocks, records
    # in flight).
    reward_grace_s: float = Field(5.0, ge=0)
    # A window of a partition read to its end closes on the wall clock this much after its
    # deadline: longer than a cluster may take to acknowledge a record (a lost follower
    # holds the high watermark until replica.lag.time.max.ms, 30 s by default).
    reward_quiet_grace_s: float = Field(60.0, ge=0)

    # --- Domains and policies ------------------------------------------------------------
    max_domains: int = Field(1000, ge=1)
    max_candidates: int = Field(64, ge=1, le=4096)
    # Distinct actions one domain may accumulate; each costs a d x d model in linear policies.
    max_actions: int = Field(256, ge=1)
    max_message_bytes: int = Field(1_048_576, ge=64)
    # Context plus candidate features of one event (each pending decision keeps them).
    max_context_features: int = Field(1_000, ge=1)
    policy: str = "doubly_robust"
    baseline_policy: str = "epsilon_greedy"
    shadow_policies: CommaList = Field(default_factory=lambda: ["offset_tree", "linucb"])
    feature_dim: int = Field(64, ge=2, le=4096)
    seed: int = Field(0, ge=0)
    # Each policy's knobs (RL_EPSILON, RL_DR_ALPHA, ...) are fields too, made from the
    # policies' own declarations (policies/knobs.py): see the end of this module.

    # --- Loop ----------------------------------------------------------------------------
    batch_size: int = Field(10_000, ge=1, le=100_000)
    update_interval: int = Field(10, ge=1)
    # Buffered rewards are learned after this long even if update_interval is not reached,
    # so a quiet domain still learns.
    update_max_delay_s: float = Field(1.0, gt=0)
    poll_timeout_s: float = Field(0.1, gt=0)
    shutdown_timeout_s: float = Field(30.0, gt=0)

    # --- State, metrics, logging ---------------------------------------------------------
    state_dir: Path = Path("state")
    checkpoint_interval_s: float = Field(30.0, gt=0)
    checkpoint_keep: int = Field(5, ge=1)
    # A periodic checkpoint's state-topic records are paced to this (0: as fast as the
    # broker takes them), waiting a quarter of the publish's time at most: a burst of them
    # on the broker the decisions go through is a burst of slow decisions.
    state_publish_mb_per_s: float = Field(16.0, ge=0)
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9464, ge=0, le=65535)
    metrics_interval_s: float = Field(10.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "text"
    memory_limit_mb: int = Field(2048, ge=64)
    memory_cleanup_interval: float = Field(60.0, gt=0)
    # Every finished join (JSONL file path, or "kafka:TOPIC"); empty: none.
    joined_log: str = ""
    # Every loop turn's stage timings and garbage collections (JSONL file path; empty:
    # none): what ``bench latency`` reads to explain its slowest decisions.
    loop_trace: str = ""

    # --- Failure handling ------------------------------------------------------------------
    # An unexpected exception while processing a message that decoded fine: "fail" stops
    # the process without committing past the input fully processed; "dead_letter" sends
    # the message to the dead-letter topic (internal_error) and goes on, until more than
    # max_processing_errors in a minute.
    on_processing_error: Literal["fail", "dead_letter"] = "fail"
    max_processing_errors: int = Field(100, ge=0)
    # Injected faults for resilience tests: "name:probability,..." (stream/failpoints.py).
    failpoints: str = ""
    failpoint_seed: int | None = None  # default: RL_SEED

    # --- Rollout and monitoring ----------------------------------------------------------
    rollout_percentage: float = Field(0.1, ge=0.0, le=1.0)
    rollout_domains: CommaList = Field(default_factory=list)
    latency_threshold_ms: float = Field(50.0, gt=0)
    memory_threshold_mb: float = Field(1024.0, gt=0)
    error_rate_threshold: float = Field(0.05, ge=0.0, le=1.0)
    enable_rl_advanced: bool = _switch("ENABLE_RL_ADVANCED", False)
    enable_rl_monitoring: bool = _switch("ENABLE_RL_MONITORING", True)
    enable_rl_shadow_eval: bool = _switch("ENABLE_RL_SHADOW_EVAL", False)

    @field_validator("shadow_policies", "rollout_domains", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("default_reward", mode="before")
    @classmethod
    def _none_word(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ("none", "null", ""):
            return None
        return v

    @field_validator("reward_min", "reward_max", "default_reward", "reward_wait_s")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("failpoints")
    @classmethod
    def _known_failpoints(cls, v: str) -> str:
        from stream.failpoints import parse

        parse(v)
        return v

    @field_validator(*_UPPER_CHOICES, mode="before")
    @classmethod
    def _upper_choice(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator(*_LOWER_CHOICES, mode="before")
    @classmethod
    def _lower_choice(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("policy", "baseline_policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        _check_policy(v)
        return v

    @field_validator("shadow_policies")
    @classmethod
    def _known_policies(cls, v: list[str]) -> list[str]:
        v = [name.lower() for name in v]
        for name in v:
            _check_policy(name)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> _Settings:
        if self.reward_min >= self.reward_max:
            raise ValueError("RL_REWARD_MIN must be below RL_REWARD_MAX")
        if self.default_reward is not None and not (
            self.reward_min <= self.default_reward <= self.reward_max
        ):
            raise ValueError("RL_DEFAULT_REWARD must lie within RL_REWARD_MIN..RL_REWARD_MAX")
        shared, dim = getattr(self, "shared_model", "false"), getattr(self, "shared_dim", 0)
        if shared != "false" and dim < 2 * self.feature_dim + 2:
            raise ValueError(
                "RL_SHARED_DIM must exceed twice RL_FEATURE_DIM (the context and the "
                "candidate's features each take RL_FEATURE_DIM slots; the crosses the rest)"
            )
        if self.kafka_session_timeout_ms - self.kafka_heartbeat_interval_ms < 1000:
            raise ValueError(
                "RL_KAFKA_HEARTBEAT_INTERVAL_MS must be at least 1000 below "
                "RL_KAFKA_SESSION_TIMEOUT_MS (their difference is how long a decision may "
                "wait for the broker before it is given up on)"
            )
        return self


def _lower(v: Any) -> Any:
    return v.strip().lower() if isinstance(v, str) else v


def _knob_fields() -> dict[str, Any]:
    """A settings field per policy knob, as the policies declare them (one field for a
    knob several policies share)."""
    from policies.registry import POLICIES

    declared: dict[str, Knob] = {}
    for cls in POLICIES.values():
        for knob in cls.knobs:
            if declared.setdefault(knob.setting, knob) != knob:
                raise TypeError(f"the setting {knob.setting} is declared twice, differently")
    fields: dict[str, Any] = {}
    for name, k in declared.items():
        kind: Any = k.kind
        if k.choices:  # matched without regard to case, as every choice
            kind = Annotated[Literal[k.choices], BeforeValidator(_lower)]
        field = Field(k.default, description=k.doc, ge=k.ge, gt=k.gt, le=k.le, lt=k.lt)
        fields[name] = (kind, field)
    return fields


if TYPE_CHECKING:
    Settings = _Settings
else:
    Settings = create_model("Settings", __base__=_Settings, **_knob_fields())


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    upper = field.upper()
    return upper if upper in _SWITCHES else ENV_PREFIX + upper


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that make :func:`load_settings` return ``settings``
    (every field, defaults included): how a parent hands its settings to a child process."""
    env = {}
    for field, info in Settings.model_fields.items():
        value = getattr(settings, field)
        if value is None:
            if info.default is None:
                continue  # unset is the default
            value = "none"  # e.g. RL_DEFAULT_REWARD=none: no default reward
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = ",".join(value)
        elif isinstance(value, dict):
            text = orjson.dumps(value).decode()
        else:
            text = str(value)
        env[env_name(field)] = text
    return env


def known_env_names() -> set[str]:
    return {env_name(f) for f in Settings.model_fields}


def unknown_env_vars() -> list[str]:
    """``RL_*`` and ``ENABLE_RL_*`` variables that no setting reads (likely typos)."""
    known = known_env_names()
    return sorted(
        k
        for k in os.environ
        if k.upper().startswith((ENV_PREFIX, "ENABLE_RL_"))
        and k.upper() not in known
        and not k.upper().startswith("RL_TEST_")
    )


def policy_trap(settings: Settings) -> str | None:
    """A warning when RL_POLICY is set as if it chose the served policy, which it does not
    without ENABLE_RL_ADVANCED."""
    if "policy" not in settings.model_fields_set or settings.enable_rl_advanced:
        return None
    if settings.policy == settings.baseline_policy:
        return None
    return (
        f"RL_POLICY={settings.policy} serves nothing without ENABLE_RL_ADVANCED=true (then "
        f"only the rollout's treatment share); every domain is served by "
        f"RL_BASELINE_POLICY={settings.baseline_policy}"
    )


def closest_env_name(name: str) -> str | None:
    """The setting a mistyped variable most likely meant (None when nothing is close)."""
    match = difflib.get_close_matches(name.upper(), sorted(known_env_names()), n=1, cutoff=0.6)
    return match[0] if match else None


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment plus ``overrides``; errors name variables."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
            name = env_name(loc[0]) if loc else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            shown = loc and not isinstance(err.get("input"), dict) and "unknown" not in msg
            got = f" (got {err['input']!r})" if shown else ""
            lines.append(f"{name}: {msg}{got}")
        raise ConfigError("; ".join(lines)) from None
    except SettingsError as exc:  # a value the environment source could not even parse
        field = re.search(r'field "(\w+)"', str(exc))
        name = env_name(field.group(1)) if field else "settings"
        what = "a JSON object" if field and field.group(1) == "kafka_extra" else "valid"
        raise ConfigError(f"{name}: not {what}") from None

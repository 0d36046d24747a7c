"""A policy's knobs, declared once beside the policy: the constructor argument, the setting
that configures it (``RL_<SETTING>``), its type, default, range, choices and tuning space.

The settings (:mod:`stream.config`), ``bandit-stream tune``, the CLI's choices and the
product's policy construction all read these declarations, so adding a policy touches its
module, its tests and one line of :mod:`policies.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    param: str  # the policy constructor's keyword argument
    setting: str  # the settings field: environment variable RL_<SETTING upper-cased>
    kind: type  # float, int or str
    default: Any  # the product's default (may differ from the constructor's)
    doc: str
    ge: float | None = None  # bounds, as pydantic's Field takes them
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()  # for a str knob; matched without regard to case
    # How `bandit-stream tune` searches it: ("float" | "log" | "int", low, high).
    tune: tuple[str, float, float] | None = None


# Knobs several policies take: one declaration, one setting.
FLOOR = Knob(
    "floor",
    "exploration_floor",
    float,
    0.01,
    "probability mass every non-epsilon-greedy policy spreads over the K candidates",
    ge=0.0,
    lt=1.0,
)
SHARED = (
    Knob(
        "shared",
        "shared_model",
        str,
        "auto",
        "one reward model per domain over candidate features instead of one per action: "
        "auto when a domain's first events carry candidate_features",
        choices=("auto", "true", "false"),
    ),
    Knob(
        "shared_dim",
        "shared_dim",
        int,
        256,
        "slots of the shared reward model",
        ge=16,
        le=2048,
    ),
)

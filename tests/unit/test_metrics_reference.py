"""docs/metrics.md names every metric a service registers, with what to alert on, as
scripts/metrics-reference writes it."""

from __future__ import annotations

from pathlib import Path

from stream.config import load_settings
from stream.observe.reference import ALERT_ON, families, metrics_reference
from stream.service import Service

ROOT = Path(__file__).resolve().parents[2]


def _collectors() -> list[object]:
    service = Service(load_settings(metrics_port=0))
    return list(service.metrics.registry._collector_to_names)


def test_every_metric_says_what_to_alert_on():
    names = {name for name, *_ in families(_collectors())}
    assert len(names) >= 18
    assert names == set(ALERT_ON), names ^ set(ALERT_ON)


def test_the_metrics_reference_is_current():
    text = (ROOT / "docs" / "metrics.md").read_text()
    assert text == metrics_reference(_collectors()), (
        "docs/metrics.md is stale: run scripts/metrics-reference"
    )

"""`bandit-stream replay LOG`: policies learning off-policy on a joined log, and their
estimated value (IPS, self-normalised IPS, doubly robust, 95% intervals) beside the logging
policy's actual mean reward.

Each domain of the log gets its own instance of every policy, fed the exact hashed
features the service logged, in micro-batches of ``RL_UPDATE_INTERVAL`` in log order: a
batch is scored first (each policy's full distribution against the logged decisions, with
a per-domain ridge reward model for DR's direct-method term), then learned.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policies import Feedback, Policy
from policies.estimators import Z95, OnlineEstimate
from policies.features import FeatureHasher
from policies.ridge import RidgePolicy
from stream.config import Settings
from stream.core.policy_config import REWARD_MODEL_POLICY, build_policy
from stream.state.records import encoded_from_record


@dataclass
class Result:
    estimates: dict[str, OnlineEstimate]
    logged: list[float]
    # per policy: (events replayed, DR estimate, 95% low, 95% high)
    curve: dict[str, list[tuple[int, float, float, float]]] = field(default_factory=dict)
    domains: int = 0

    def summary(self) -> dict[str, Any]:
        r = np.asarray(self.logged)
        n = len(r)
        half = Z95 * float(r.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
        mean = float(r.mean()) if n else math.nan
        return {
            "events": n,
            "logging_policy": {"mean": mean, "low": mean - half, "high": mean + half},
            "policies": {
                name: {k: e.as_dict() for k, e in acc.result().items()}
                for name, acc in self.estimates.items()
            },
        }


class Replayer:
    """Runs ``policies`` over joined-log records; ``learn=False`` only scores (held out)."""

    def __init__(
        self,
        policies: Sequence[str],
        settings: Settings,
        params: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.names = list(policies)
        self.settings = settings
        self.params = params or {}
        self.estimates = {n: OnlineEstimate() for n in self.names}
        self._policies: dict[tuple[str, str], Policy] = {}
        self._models: dict[str, Policy] = {}
        self._hashers: dict[int, FeatureHasher] = {}
        self.logged: list[float] = []
        self.curve: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)

    def _policy(self, domain: str, name: str, n_features: int) -> Policy:
        key = (domain, name)
        pol = self._policies.get(key)
        if pol is None:
            over = self.params.get(name)
            pol = build_policy(name, domain, self.settings, n_features, over)
            self._policies[key] = pol
        return pol

    def _model(self, domain: str, n_features: int) -> Policy:
        m = self._models.get(domain)
        if m is None:
            m = build_policy(REWARD_MODEL_POLICY, domain, self.settings, n_features)
            self._models[domain] = m
        return m

    def run(self, records: Sequence[dict[str, Any]], learn: bool = True, bar: Any = None) -> None:
        size = max(1, self.settings.update_interval)
        pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in records:
            if rec.get("reward") is None:
                continue  # dropped unlearned (RL_DEFAULT_REWARD=none): nothing to score
            buf = pending[rec["domain"]]
            buf.append(rec)
            if len(buf) >= size:
                self._batch(rec["domain"], buf, learn)
                pending[rec["domain"]] = []
            if bar is not None:
                bar.update(1)
        for domain, buf in pending.items():
            if buf:
                self._batch(domain, buf, learn)

    def _batch(self, domain: str, recs: list[dict[str, Any]], learn: bool) -> None:
        n_features = int(recs[0]["n_features"])
        hasher = self._hashers.get(n_features)
        if hasher is None:
            hasher = self._hashers[n_features] = FeatureHasher(n_features)
        encoded = [encoded_from_record(r, n_features) for r in recs]
        batch = hasher.assemble(encoded, [r["event_id"] for r in recs])
        rows = batch.offsets[:-1] + np.array([r["chosen"] for r in recs], dtype=np.int64)
        rewards = np.array([float(r["reward"]) for r in recs])
        probs = np.array([float(r["probability"]) for r in recs])
        logged = Feedback(batch, rows, rewards, probs)
        model = self._model(domain, n_features)
        assert isinstance(model, RidgePolicy)
        r_hat = model.predict_rewards(batch)
        for name in self.names:
            pol = self._policy(domain, name, n_features)
            self.estimates[name].score(pol, logged, r_hat)
            if learn:
                pol.learn(logged)
        model.learn(logged)
        self.logged.extend(rewards.tolist())
        n = len(self.logged)
        for name in self.names:
            dr = self.estimates[name].result()["dr"]
            self.curve[name].append((n, dr.value, dr.low, dr.high))

    def result(self) -> Result:
        return Result(self.estimates, self.logged, dict(self.curve), len(self._models))


def write_report(res: Result, out: Path, log_path: str) -> dict[str, Any]:
    from stream.bench.report import markdown_table, pyplot, write_json, write_markdown

    summary = {"log": log_path, **res.summary()}
    if not summary["events"]:
        return summary  # nothing to estimate: no table of nan, no empty plot
    write_json(out, "replay", {**summary, "curve": res.curve})
    lp = summary["logging_policy"]
    rows = [
        ["logging policy (actual)", f"{lp['mean']:.4f} [{lp['low']:.4f}, {lp['high']:.4f}]", "", ""]
    ]
    for name, est in summary["policies"].items():
        cells = [
            f"{e['value']:.4f} [{e['low']:.4f}, {e['high']:.4f}]"
            for e in (est["ips"], est["snips"], est["dr"])
        ]
        rows.append([name, *cells])
    table = markdown_table(["policy", "IPS", "SNIPS", "DR"], rows)
    write_markdown(
        out,
        "replay",
        f"# Replay of {log_path}\n\n{summary['events']} events, 95% intervals.\n\n{table}\n",
    )
    fig = figure(res, summary)
    fig.savefig(out / "replay.png", dpi=110)
    pyplot().close(fig)
    return summary


def figure(res: Result, summary: dict[str, Any]) -> Any:
    """Each policy's doubly robust estimate as the replay goes, with its 95% interval."""
    from stream.bench.report import pyplot

    lp = summary["logging_policy"]
    fig, ax = pyplot().subplots(figsize=(7, 4.4))
    for name, pts in res.curve.items():
        n, value, low, high = (np.asarray(c, dtype=float) for c in zip(*pts, strict=True))
        (line,) = ax.plot(n, value, label=f"{name} (DR)")
        ok = np.isfinite(low) & np.isfinite(high)  # a single event has no interval
        ax.fill_between(n[ok], low[ok], high[ok], color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(lp["mean"], color="black", linestyle="--", label="logging policy (actual)")
    ax.set_title(
        f"Policies replayed off-policy on {Path(summary['log']).name}: {summary['events']:,} "
        f"events, {res.domains} domain{'s' if res.domains != 1 else ''}\n"
        "doubly robust estimate as the replay goes, bands: 95% intervals",
        fontsize=10,
    )
    ax.set_xlabel("events replayed")
    ax.set_ylabel("estimated value (mean reward)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def replay_file(
    log_path: Path, policies: Sequence[str], settings: Settings, out: Path
) -> dict[str, Any]:
    from stream.bench.report import progress_bar
    from stream.joinedlog import read

    records = read(log_path)
    rep = Replayer(policies, settings)
    with progress_bar(total=len(records), desc="replay", unit="ev") as bar:
        rep.run(records, learn=True, bar=bar)
    return write_report(rep.result(), out, str(log_path))

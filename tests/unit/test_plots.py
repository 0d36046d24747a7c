"""The report plots say what they show: convergence.png's panels name the simulator, its
size and the seeds over an axis of rounds; replay.png has a title and 95% bands; an empty
joined log gives one line, not a table of nan."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from stream.bench import convergence
from stream.cli import main
from stream.config import load_settings
from stream.offline.replay import Replayer, figure, write_report
from tests.unit.test_replay_shared import _records


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    results, _ = convergence.run(
        ["epsilon_greedy", "linucb"],
        ["linear", "items"],
        2,
        0,
        tmp_path_factory.mktemp("conv"),
        load_settings(),
        rounds=600,
    )
    return results


def test_each_convergence_panel_names_its_simulator_size_and_seeds(runs):
    fig = convergence.figure(runs, "Cumulative regret, caption")
    by_title = {ax.get_title().split(":")[0]: ax for ax in fig.axes}
    assert set(by_title) == {"items", "linear"}
    linear, items = by_title["linear"], by_title["items"]
    assert linear.get_title() == "linear: 5 actions, 600 rounds, 2 seeds"
    assert items.get_title().startswith("items: 2000 actions, 600 rounds")
    for ax in (linear, items):
        assert ax.get_xlabel() == "round" and ax.get_xlim() == (0.0, 600.0)
        for line in ax.get_lines():
            x = line.get_xdata()
            assert x[0] == 0 and 590 <= x[-1] < 600  # the horizon, not a fraction
    assert fig._suptitle.get_text() == "Cumulative regret, caption"


def test_the_convergence_caption_carries_the_settings_and_the_delay(tmp_path, monkeypatch):
    seen = {}
    real = convergence.figure

    def spy(results, caption):
        seen["caption"] = caption
        return real(results, caption)

    monkeypatch.setattr(convergence, "figure", spy)
    monkeypatch.setattr(convergence, "measure_peers", lambda sims, delay: {})
    convergence.run(["linucb"], ["linear"], 1, 50, tmp_path, load_settings(), rounds=300)
    assert "update interval" in seen["caption"] and "50 events late" in seen["caption"]
    assert (tmp_path / "convergence.png").read_bytes()[:4] == b"\x89PNG"


def test_the_replay_plot_has_a_title_and_an_interval_band(tmp_path):
    rep = Replayer(["linucb", "squarecb"], load_settings())
    rep.run(_records(300))
    summary = write_report(rep.result(), tmp_path, str(tmp_path / "joined.jsonl"))
    fig = figure(rep.result(), summary)
    (ax,) = fig.axes
    assert ax.get_title().startswith("Policies replayed off-policy on joined.jsonl: 300 events")
    assert "1 domain" in ax.get_title() and "95% intervals" in ax.get_title()
    bands = ax.collections
    assert len(bands) == 2  # one per policy
    for band, name in zip(bands, ("linucb", "squarecb"), strict=True):
        ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
        dr = summary["policies"][name]["dr"]
        assert ys.min() <= dr["low"] + 1e-9 and ys.max() >= dr["high"] - 1e-9
    curve = orjson.loads((tmp_path / "replay.json").read_bytes())["curve"]["linucb"]
    n, value, low, high = curve[-1]
    assert n == 300 and low <= value <= high


def test_an_empty_joined_log_says_so_in_one_line(tmp_path, capsys):
    log = tmp_path / "joined.jsonl"
    log.write_text("")
    out = tmp_path / "out"
    assert main(["replay", str(log), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"replay: {log} holds no joined event with a reward"
    assert not (out / "replay.md").exists() and not (out / "replay.png").exists()
    summary = write_report(Replayer(["linucb"], load_settings()).result(), out, str(log))
    assert summary["events"] == 0 and math.isnan(summary["logging_policy"]["mean"])

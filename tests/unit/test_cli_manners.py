"""The command line's manners: every flag explained with its default, a version."""

from __future__ import annotations

import argparse
import threading
import time

import pytest

from stream.cli import build_parser, main


def _parsers(p: argparse.ArgumentParser, path: str = "bandit-stream"):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_flag_has_help_and_shows_its_default():
    missing, undefaulted = [], []
    for path, p in _parsers(build_parser()):
        shown = p._get_formatter()._get_help_string  # the help text as --help shows it
        for a in p._actions:
            if not a.option_strings or isinstance(
                a, argparse._HelpAction | argparse._VersionAction
            ):
                continue
            if not a.help:
                missing.append(f"{path} {a.option_strings[0]}")
            elif a.default is not None and "%(default)" not in (shown(a) or ""):
                undefaulted.append(f"{path} {a.option_strings[0]}")
    assert not missing and not undefaulted, (missing, undefaulted)


def test_version_and_a_description_of_what_the_tool_is(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("bandit-stream ")
    assert "contextual-bandit decisions on Kafka" in build_parser().format_help()


def test_replay_says_in_one_line_that_it_reads_files_not_topics(capsys):
    assert main(["replay", "kafka:bandit.joined"]) == 2
    err = capsys.readouterr().err
    assert "replay reads a joined-log file" in err and len(err.strip().splitlines()) == 1


def test_the_demo_takes_its_log_level_from_rl_log_level(monkeypatch):
    import stream.offline.demo as demo

    levels = []
    monkeypatch.setattr(demo, "run_demo", lambda *a: levels.append(a[-1].log_level) or 0)
    monkeypatch.delenv("RL_LOG_LEVEL", raising=False)
    assert main(["demo", "--events", "1"]) == 0  # unset: the live table stays readable
    monkeypatch.setenv("RL_LOG_LEVEL", "debug")
    assert main(["demo", "--events", "1"]) == 0
    assert levels == ["WARNING", "DEBUG"]
    with pytest.raises(SystemExit):
        main(["demo", "--log-level", "INFO"])  # one way to set it: RL_LOG_LEVEL


def test_every_subcommand_describes_itself_in_its_own_help():
    bare = [path for path, p in _parsers(build_parser()) if not p.description]
    assert not bare, bare


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_missing_input_file_is_one_line_and_exit_4(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert main(["replay", str(missing), "--out", str(tmp_path)]) == 4
    assert f"cannot read the joined log {missing}" in _one_error_line(capsys)
    args = ["tune", "--log", str(missing), "--policy", "squarecb", "--out", str(tmp_path)]
    assert main(args) == 4
    assert "No such file" in _one_error_line(capsys)


def test_an_unreachable_broker_is_one_line_and_exit_3(monkeypatch, tmp_path, capsys):
    from stream.kafka.embedded import free_port

    monkeypatch.setenv("RL_KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("RL_KAFKA_CONNECT_TIMEOUT_S", "1")
    monkeypatch.setenv("RL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("RL_METRICS_PORT", "0")
    assert main(["run"]) == 3
    assert "RL_KAFKA_CONNECT_TIMEOUT_S" in _one_error_line(capsys)


def test_a_checkpoint_version_that_is_not_there_is_exit_1_like_any_miss(
    monkeypatch, tmp_path, capsys
):
    from stream.state.records import Snapshot
    from stream.state.store import CheckpointStore

    CheckpointStore(tmp_path / "checkpoints.sqlite").write(Snapshot({}))
    monkeypatch.setenv("RL_STATE_DIR", str(tmp_path))
    assert main(["checkpoint", "show", "shop", "--at", "99"]) == 1
    _one_error_line(capsys)
    assert main(["checkpoint", "show", "shop"]) == 1  # a domain not in it
    _one_error_line(capsys)


def test_simulate_says_once_when_no_service_answers(monkeypatch, capsys):
    import queue

    import stream.cli as cli
    from stream.config import load_settings

    monkeypatch.setattr(cli, "SIMULATE_QUIET_S", 0.05)
    reports: queue.Queue = queue.Queue()
    quiet = {"produced": 10, "tallies": {"shop": {"decisions": 0}}}

    def simulator() -> None:  # reports a quarter of a second apart, as the real one
        for _ in range(3):
            time.sleep(0.06)
            reports.put(("progress", quiet))
        reports.put(("progress", {"produced": 20, "tallies": {"shop": {"decisions": 5}}}))
        reports.put(("done", {"produced": 20, "tallies": {"shop": {"decisions": 20}}}))

    threading.Thread(target=simulator, daemon=True).start()
    cli.follow(reports, lambda: True, load_settings())
    out = capsys.readouterr()
    assert out.err.count("no decision in") == 1 and "bandit.contexts" in out.err
    assert len(out.out.strip().splitlines()) == 5  # every report, as JSON

"""`bandit-stream run | broker | simulate | demo | replay | tune | checkpoint | bench`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka.admin import AdminClient

from stream import extras
from stream.argparsing import Parser, command
from stream.bench.commands import add_bench_commands
from stream.checkpoints import add_checkpoint_commands
from stream.config import (
    Settings,
    closest_env_name,
    load_settings,
    policy_trap,
    unknown_env_vars,
)
from stream.errors import (
    BrokerError,
    BrokerUnreachable,
    ConfigError,
    InputFileError,
    NewerFormat,
    StreamError,
)
from stream.kafka.clients import admin_config, check_client_configs
from stream.kafka.topics import ensure_topics
from stream.logs import JsonFormatter, setup_logging
from stream.signals import stop_on_signals

log = logging.getLogger("stream.cli")


def _settings(**overrides: object) -> Settings:
    settings = load_settings(**overrides)
    setup_logging(settings.log_level, settings.log_format)
    for name in unknown_env_vars():
        near = closest_env_name(name)
        hint = f"; did you mean {near}?" if near else ""
        log.warning("environment variable %s is not a bandit-stream setting%s", name, hint)
    if trap := policy_trap(settings):
        log.warning("%s", trap)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    from stream.service import Service

    settings = _settings()
    check_client_configs(settings)
    service = Service(settings)  # connects nowhere until it runs
    # From the start: a SIGTERM during start-up exits 0 too.
    with stop_on_signals(service, settings.shutdown_timeout_s):
        # The probe's own connection errors unlogged: when no broker answers, the one line
        # is the exit-3 error's.
        ensure_topics(settings, AdminClient(admin_config(settings, log_errors=False)))
        try:
            if args.profile:
                from stream.observe.profiling import run_profiled

                name = f"profile-{args.profile}.txt"
                out = Path(args.profile_out or Path(settings.state_dir) / name)
                run_profiled(args.profile, service.run, out)
                print(f"{args.profile} profile: {out}", file=sys.stderr)
            else:
                service.run()
        except (ConfigError, NewerFormat):
            raise  # one line (main): exit 2, or 1 for state this version cannot read
        except Exception as exc:
            # One line an operator can act on (the traceback follows it in the log).
            log.critical(
                "stopped by an unexpected error, nothing committed past the last "
                "checkpoint (a restart resumes from it): %s: %s",
                type(exc).__name__,
                exc,
                exc_info=True,
            )
            return 1
    return 0 if service.shutdown_clean else 1


def cmd_broker(args: argparse.Namespace) -> int:
    from stream.kafka.brokers import make_broker

    settings = _settings(topic_partitions=args.partitions)
    stop = threading.Event()
    # Handlers first: a signal that arrives while the broker starts still stops it cleanly.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    with make_broker(args.engine, nodes=args.nodes, port=args.port) as broker:
        settings = settings.model_copy(update={"kafka_bootstrap_servers": broker.bootstrap_servers})
        counts = ensure_topics(settings, AdminClient(admin_config(settings)))
        print(f"bootstrap servers: {broker.bootstrap_servers}", flush=True)
        print("topics: " + ", ".join(f"{t} ({n})" for t, n in counts.items()), flush=True)
        print(f"broker: {broker.description}", flush=True)
        print("Ctrl-C or SIGTERM stops the broker", flush=True)
        stop.wait()
        print("stopping broker", flush=True)
    return 0


SIMULATE_QUIET_S = 10.0  # simulate says no service seems to answer after this long


def follow(reports: Any, alive: Callable[[], bool], s: Settings) -> None:
    """Print the simulator's reports as JSON lines until it is done; say once when no
    decision came back for SIMULATE_QUIET_S (no service consumes its contexts)."""
    import queue

    started, warned = time.monotonic(), False
    while alive():
        try:
            kind, summary = reports.get(timeout=1.0)
        except queue.Empty:
            continue
        print(orjson.dumps({"kind": kind, **summary}).decode(), flush=True)
        if kind == "done":
            return
        decided = sum(t.get("decisions", 0) for t in summary["tallies"].values())
        if not decided and not warned and time.monotonic() - started > SIMULATE_QUIET_S:
            warned = True
            print(
                f"no decision in {SIMULATE_QUIET_S:.0f} s: is a service consuming "
                f"{s.topic_contexts} on {s.kafka_bootstrap_servers}? (bandit-stream run, "
                "with the same RL_KAFKA_BOOTSTRAP_SERVERS and RL_TOPIC_* settings)",
                file=sys.stderr,
                flush=True,
            )


def cmd_simulate(args: argparse.Namespace) -> int:
    """The demo's traffic alone, against RL_KAFKA_BOOTSTRAP_SERVERS (docker-compose)."""
    import multiprocessing as mp

    from stream.offline.traffic import simulate

    s = _settings()
    spawn = mp.get_context("spawn")  # queue, event and process from one context
    reports: Any = spawn.Queue()
    stop = spawn.Event()
    proc = spawn.Process(
        target=simulate,
        args=(
            s.kafka_bootstrap_servers,
            s.topic_contexts,
            s.topic_rewards,
            s.topic_decisions,
            args.events or 10**12,  # 0: until stopped
            args.rate,
            args.seed,
            2.0,
            reports,
            stop,
        ),
        daemon=True,
    )
    proc.start()
    try:
        follow(reports, proc.is_alive, s)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        proc.join(10)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.offline.demo import run_demo

    # RL_LOG_LEVEL, as everywhere; unset, the demo keeps the service's INFO lines out of
    # its live table.
    settings = _settings(log_level=os.environ.get("RL_LOG_LEVEL", "WARNING"))
    return run_demo(args.events, args.rate, args.seed, settings)


def cmd_replay(args: argparse.Namespace) -> int:
    from policies import POLICIES
    from stream.offline.replay import replay_file

    if str(args.log).startswith("kafka:"):  # a form RL_JOINED_LOG takes, not replay
        print(
            f"replay reads a joined-log file, not {args.log}: consume the topic to a JSONL file",
            file=sys.stderr,
        )
        return 2
    policies = args.policies.split(",") if args.policies else list(POLICIES)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"unknown policies: {', '.join(unknown)}", file=sys.stderr)
        return 2
    summary = replay_file(Path(args.log), policies, _settings(), Path(args.out))
    if not summary["events"]:
        print(f"replay: {args.log} holds no joined event with a reward", file=sys.stderr)
        return 1
    print((Path(args.out) / "replay.md").read_text())
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from stream.offline import tune

    settings = _settings()
    if bool(args.log) == bool(args.sim):
        print("tune needs exactly one of --log PATH or --sim NAME", file=sys.stderr)
        return 2
    if args.log:
        from stream.joinedlog import read

        objective = tune.log_objective(read(Path(args.log)), args.policy, settings, args.holdout)
    else:
        objective = tune.sim_objective(args.sim, args.policy, settings, args.seeds)
    result = tune.tune(objective, args.policy, args.trials, Path(args.out), args.seed)
    print(f"best objective {result['best_value']:.4f} after {result['trials']} trials")
    print(f"study stored in {result['storage']}")
    print("\n".join(result["env"]))
    return 0


DESCRIPTION = (
    "bandit-stream: contextual-bandit decisions on Kafka. Consumes context events, publishes "
    "each decision with its exact probability, joins rewards and learns online. Commands run "
    "the service, try it locally (broker, simulate, demo), inspect its checkpoints, replay and "
    "tune policies on a joined log, and benchmark it. Settings: RL_* environment variables."
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bandit-stream")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="bandit-stream", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    run = command(
        sub,
        "run",
        "run the service (configured by RL_* environment variables)",
        description="Run the service: consume contexts and rewards, publish decisions, learn, "
        "checkpoint. Configured by RL_* environment variables only (every one: "
        "docs/configuration.md); a bad one stops the start with one line naming it (exit 2). "
        "Exit codes: 0 stopped cleanly, 1 stopped by an error, 2 settings, 3 no broker.",
    )
    run.add_argument(
        "--profile",
        choices=["cpu", "memory"],
        help="write a cProfile (cpu) or tracemalloc (memory) report on exit",
    )
    run.add_argument("--profile-out", help="report path (default RL_STATE_DIR/profile-KIND.txt)")
    run.set_defaults(fn=cmd_run)
    broker = command(
        sub,
        "broker",
        "run a local broker: embedded Tansu (default) or Apache Kafka",
        description="A local broker for trying the service out, with the service's topics "
        "created. embedded: Tansu, in memory, no install. kafka: Apache Kafka "
        "(KRaft), resolved with Maven into ~/.cache/bandit-stream/kafka on first use (Java >= "
        "17 and Maven, or KAFKA_HOME). Either keeps its data only while it runs.",
    )
    broker.add_argument(
        "--engine", choices=["embedded", "kafka"], default="embedded", help="which broker"
    )
    broker.add_argument(
        "--nodes", type=int, choices=[1, 3], default=1, help="Kafka nodes (--engine kafka)"
    )
    broker.add_argument("--port", type=int, default=9092, help="listening port (of the first node)")
    broker.add_argument(
        "--partitions", type=int, default=4, help="partitions of the topics it creates"
    )
    broker.set_defaults(fn=cmd_broker)
    sim = command(
        sub,
        "simulate",
        "the demo's simulated traffic against RL_KAFKA_BOOTSTRAP_SERVERS",
        description="Produce the demo's contexts to RL_TOPIC_CONTEXTS, read their decisions "
        "and reward them as the simulated users would; prints a JSON progress line four times "
        "a second. Needs a service consuming the same topics (bandit-stream run).",
    )
    sim.add_argument("--events", type=int, default=0, help="0: until stopped")
    sim.add_argument("--rate", type=float, default=200.0, help="contexts per second")
    sim.add_argument("--seed", type=int, default=0, help="traffic seed")
    sim.set_defaults(fn=cmd_simulate)
    demo = command(sub, "demo", "broker + service + simulated traffic, live")
    demo.add_argument("--events", type=int, default=20_000, help="contexts to send")
    demo.add_argument("--rate", type=float, default=2_000.0, help="contexts per second")
    demo.add_argument("--seed", type=int, default=7, help="traffic seed")
    demo.set_defaults(fn=cmd_demo)
    add_checkpoint_commands(sub, _settings)
    rp = command(sub, "replay", "policies off-policy on a joined log (RL_JOINED_LOG)")
    rp.add_argument("log", help="a JSONL joined log")
    rp.add_argument(
        "--policies",
        default=None,
        help="comma list of policies to replay (default: every registered policy)",
    )
    rp.add_argument("--out", default="replay-out", help="directory for replay.json, .md, .png")
    rp.set_defaults(fn=cmd_replay)
    tn = command(sub, "tune", "optuna search of a policy's settings")
    from stream.bench.simulators import SIMULATORS
    from stream.offline.tune import SPACES

    tn.add_argument("--policy", choices=sorted(SPACES), required=True, help="policy to tune")
    tn.add_argument("--trials", type=int, default=30, help="optuna trials")
    tn.add_argument("--log", help="a joined log: maximise the DR estimate on its held-out tail")
    tn.add_argument("--holdout", type=float, default=0.2, help="share of the log held out")
    tn.add_argument("--sim", choices=sorted(SIMULATORS), help="or a simulator")
    tn.add_argument("--seeds", type=int, default=2, help="simulator seeds per trial")
    tn.add_argument("--seed", type=int, default=0, help="sampler seed")
    tn.add_argument("--out", default="tune-out", help="directory for the study (tune.db)")
    tn.set_defaults(fn=cmd_tune)
    add_bench_commands(sub, _settings)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command
    for extra in extras.needed(command, getattr(args, "engine", None)):
        if gone := extras.missing(extra):
            print(extras.message(command, extra, gone), file=sys.stderr)
            return 2
    try:
        return int(args.fn(args))
    except ModuleNotFoundError as exc:
        provider = extras.extra_of(exc.name)
        if provider is None:
            raise
        print(extras.message(command, provider, [str(exc.name)]), file=sys.stderr)
        return 2
    except StreamError as exc:
        if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
            log.critical("%s", exc)  # RL_LOG_FORMAT=json: every line on stderr is JSON
        else:
            print(f"bandit-stream: {exc}", file=sys.stderr)
        return exit_code(exc)


# The README's exit-code table.
EXIT_FAILED = 1  # ran, and failed or found nothing (no checkpoint, damaged store, a bug)
EXIT_USAGE = 2  # a bad argument or setting, a missing extra or tool (Java, Maven)
EXIT_BROKER = 3  # no broker answered within RL_KAFKA_CONNECT_TIMEOUT_S
EXIT_INPUT = 4  # a file named on the command line is missing or unreadable


def exit_code(exc: StreamError) -> int:
    if isinstance(exc, BrokerUnreachable):
        return EXIT_BROKER
    if isinstance(exc, InputFileError):
        return EXIT_INPUT
    if isinstance(exc, ConfigError | BrokerError):
        return EXIT_USAGE
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

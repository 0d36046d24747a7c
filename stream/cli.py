"""`bandit-stream run | broker | simulate | demo | replay | tune | checkpoint | bench`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka.admin import AdminClient

from stream import extras
from stream.bench.commands import add_bench_commands
from stream.config import Settings, closest_env_name, load_settings, unknown_env_vars
from stream.errors import ConfigError, StreamError
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
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    from stream.service import Service

    settings = _settings()
    check_client_configs(settings)
    service = Service(settings)
    # From the start: a SIGTERM during start-up exits 0 too.
    with stop_on_signals(service, settings.shutdown_timeout_s):
        ensure_topics(settings, AdminClient(admin_config(settings)))
        try:
            if args.profile:
                from stream.observe.profiling import run_profiled

                name = f"profile-{args.profile}.txt"
                out = Path(args.profile_out or Path(settings.state_dir) / name)
                run_profiled(args.profile, service.run, out)
                print(f"{args.profile} profile: {out}", file=sys.stderr)
            else:
                service.run()
        except ConfigError:
            raise  # one line, exit 2 (main)
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


def cmd_simulate(args: argparse.Namespace) -> int:
    """The demo's traffic alone, against RL_KAFKA_BOOTSTRAP_SERVERS (docker-compose)."""
    import multiprocessing as mp
    import queue

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
        while proc.is_alive():
            try:
                kind, summary = reports.get(timeout=1.0)
            except queue.Empty:
                continue
            print(orjson.dumps({"kind": kind, **summary}).decode(), flush=True)
            if kind == "done":
                break
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


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from stream.errors import CheckpointError
    from stream.state.snapshot import BASELINE_ROLE
    from stream.state.store import CheckpointStore

    settings = _settings()
    state_dir = Path(args.state_dir or settings.state_dir)
    path = state_dir / "checkpoints.sqlite"
    if not path.is_file():
        # Reading must not create: a typo in RL_STATE_DIR would show an empty store.
        print(f"no checkpoints in {state_dir} (RL_STATE_DIR or --state-dir)", file=sys.stderr)
        return 1
    # Looking never changes a pod's state: a damaged store is reported and left in place
    # (the service itself moves it aside when it starts).
    try:
        store = CheckpointStore(path, settings.checkpoint_keep, read_only=True)
        problem = store.damage()
    except CheckpointError as exc:
        problem = str(exc)
    if problem is not None:
        print(f"checkpoint store {path} is damaged: {problem}", file=sys.stderr)
        return 1
    if args.action == "rollback":
        store.close()
        store = CheckpointStore(path, settings.checkpoint_keep)
    if args.action == "list":
        print(f"{'version':>8}  {'created (UTC)':<20} {'domains':>8} {'pending bytes':>14}")
        for v in store.versions():
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.created))
            print(f"{v.version:>8}  {created:<20} {v.domains:>8} {v.pending:>14}")
        return 0
    if args.action == "show":
        snap = store.load(args.at) if args.at else store.latest()
        if snap is None:
            print("no checkpoint", file=sys.stderr)
            return 1
        if args.domain not in snap.domains:
            print(f"domain {args.domain!r} is not in checkpoint {snap.version}", file=sys.stderr)
            return 1
        meta, arrays = snap.domains[args.domain][BASELINE_ROLE]
        info = snap.meta.domains.get(args.domain)
        pending = sum(1 for p in snap.pending if p.domain == args.domain)
        print(f"checkpoint {snap.version}, domain {args.domain}")
        print(f"  policy {meta['policy']} ({meta['params']}), learned {meta['n_learned']}")
        print(
            f"  decisions {info.decisions if info else 0}, rewards joined "
            f"{info.rewards_joined if info else 0}, pending {pending}"
        )
        print("  arrays: " + ", ".join(f"{k} {list(a.shape)}" for k, a in sorted(arrays.items())))
        return 0
    version = store.rollback(args.domain, args.version)
    print(
        f"wrote checkpoint {version}: {args.domain} as of version {args.version}; "
        "effective when the service next starts"
    )
    return 0


DESCRIPTION = (
    "bandit-stream: contextual-bandit decisions on Kafka. Consumes context events, publishes "
    "each decision with its exact probability, joins rewards and learns online. Commands run "
    "the service, try it locally (broker, simulate, demo), inspect its checkpoints, replay and "
    "tune policies on a joined log, and benchmark it. Settings: RL_* environment variables."
)


class _Parser(argparse.ArgumentParser):
    """Every flag's help shows its default (subcommands' parsers are of this class too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bandit-stream")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bandit-stream", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the service (configured by RL_* environment variables)")
    run.add_argument(
        "--profile",
        choices=["cpu", "memory"],
        help="write a cProfile (cpu) or tracemalloc (memory) report on exit",
    )
    run.add_argument("--profile-out", help="report path (default RL_STATE_DIR/profile-KIND.txt)")
    run.set_defaults(fn=cmd_run)
    broker = sub.add_parser(
        "broker",
        help="run a local broker: embedded Tansu (default) or Apache Kafka",
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
    sim = sub.add_parser(
        "simulate", help="the demo's simulated traffic against RL_KAFKA_BOOTSTRAP_SERVERS"
    )
    sim.add_argument("--events", type=int, default=0, help="0: until stopped")
    sim.add_argument("--rate", type=float, default=200.0, help="contexts per second")
    sim.add_argument("--seed", type=int, default=0, help="traffic seed")
    sim.set_defaults(fn=cmd_simulate)
    demo = sub.add_parser("demo", help="broker + service + simulated traffic, live")
    demo.add_argument("--events", type=int, default=20_000, help="contexts to send")
    demo.add_argument("--rate", type=float, default=2_000.0, help="contexts per second")
    demo.add_argument("--seed", type=int, default=7, help="traffic seed")
    demo.set_defaults(fn=cmd_demo)
    ck = sub.add_parser("checkpoint", help="inspect checkpoints under RL_STATE_DIR, roll back")
    ck.add_argument("--state-dir", type=Path, help="the state directory (default: RL_STATE_DIR)")
    ck_sub = ck.add_subparsers(dest="action", required=True)
    ck_sub.add_parser("list", help="versions, newest first").set_defaults(fn=cmd_checkpoint)
    show = ck_sub.add_parser("show", help="a domain's state in the newest (or a given) version")
    show.add_argument("domain", help="the domain to show")
    show.add_argument("--at", type=int, default=0, help="checkpoint version (0: the newest)")
    show.set_defaults(fn=cmd_checkpoint)
    rb = ck_sub.add_parser(
        "rollback",
        help="restore a domain's state from an older version "
        "(effective at the next start; run it with the service stopped)",
    )
    rb.add_argument("domain", help="the domain to restore")
    rb.add_argument("version", type=int, help="the checkpoint version to restore it from")
    rb.set_defaults(fn=cmd_checkpoint)
    rp = sub.add_parser("replay", help="policies off-policy on a joined log (RL_JOINED_LOG)")
    rp.add_argument("log", help="a JSONL joined log")
    rp.add_argument(
        "--policies",
        default=None,
        help="comma list of policies to replay (default: every registered policy)",
    )
    rp.add_argument("--out", default="replay-out", help="directory for replay.json, .md, .png")
    rp.set_defaults(fn=cmd_replay)
    tn = sub.add_parser("tune", help="optuna search of a policy's settings")
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
        return 2


if __name__ == "__main__":
    sys.exit(main())

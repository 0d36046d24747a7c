"""`bandit-stream bench ...`: the benchmark subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.argparsing import command
from stream.bench.simulators import SIMULATORS
from stream.config import Settings

OUT = "directory for the results (JSON, Markdown, PNG)"


def _broker_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker",
        choices=["embedded", "kafka"],
        default="embedded",
        help="the broker started for the run; RL_KAFKA_BOOTSTRAP_SERVERS names a running "
        "cluster instead",
    )


def cmd_bench_soak(args: argparse.Namespace) -> int:
    from stream.bench.soak import run_soak

    # A broker of --broker's engine unless RL_KAFKA_BOOTSTRAP_SERVERS names a cluster.
    bootstrap = os.environ.get("RL_KAFKA_BOOTSTRAP_SERVERS")
    r = run_soak(
        args.events, args.garbage, Path(args.out), bootstrap, args.seed, args.rate, args.broker
    )
    print((Path(args.out) / "soak.md").read_text())
    ok = r["decisions_equal_valid"] and r["dead_letters_equal_garbage"] and not r["crashes"]
    return 0 if ok and r["exit_code"] == 0 else 1


def cmd_bench_e2e(args: argparse.Namespace) -> int:
    from stream.bench import e2e

    out = Path(args.out)
    if args.bench == "throughput":
        r = e2e.throughput(args.events, args.domains, out, engine=args.broker)
        print(
            f"{r['contexts_per_s']:.0f} contexts/s decided (passthrough "
            f"{r['passthrough_per_s']:.0f}/s, ratio {r['ratio']})"
        )
    elif args.bench == "latency":
        rate = args.rate
        if not rate:
            measured = e2e.throughput(
                min(args.events, 100_000), args.domains, out, engine=args.broker
            )
            rate = measured["contexts_per_s"] / 2
        r = e2e.latency(args.events, args.domains, rate, out, engine=args.broker)
        print(
            f"at {rate:.0f}/s: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
            f"p99 {r['p99_ms']} ms, p99.9 {r['p999_ms']} ms (bare passthrough on the same "
            f"broker: p50 {r['passthrough_p50_ms']} ms, p99 {r['passthrough_p99_ms']} ms)"
        )
    else:
        r = e2e.memory(args.events, args.domains, args.rate or 10_000.0, out, engine=args.broker)
        print(
            f"RSS {r['rss_final_mb']:.0f} MB after {args.events} events on {args.domains} "
            f"domains (peak {r['rss_max_mb']:.0f}); decided {r['decided_per_s']:.0f}/s of "
            f"{r['offered_per_s']:.0f}/s offered; growth {r['growth_mb_per_million']} MB per "
            "million events"
        )
    print(f"results in {out}/{args.bench}.json, .md, .png")
    return 0


def cmd_bench_all(args: argparse.Namespace) -> int:
    """Every benchmark with its defaults scaled by --scale, one combined report."""
    from stream.bench import convergence, e2e
    from stream.bench.soak import run_soak

    out = Path(args.out)
    k = args.scale
    settings = args.load_settings()
    results, peers = convergence.run(
        sorted(__import__("policies").POLICIES), ["fixed", "linear", "digits"], 3, 0, out, settings
    )
    on = args.broker
    tp = e2e.throughput(int(200_000 * k), 100, out, engine=on)
    lat = e2e.latency(int(100_000 * k), 100, tp["contexts_per_s"] / 2, out, engine=on)
    mem = e2e.memory(int(1_000_000 * k), 1000, 10_000.0, out, engine=on)
    soak = run_soak(int(1_000_000 * k), 0.01, out, None, engine=on)
    parts = [
        "# bandit-stream benchmarks\n",
        convergence.print_table(results, peers),
        *((out / f"{n}.md").read_text() for n in ("throughput", "latency", "memory", "soak")),
    ]
    (out / "all.md").write_text("\n\n".join(parts))
    print((out / "all.md").read_text())
    _ = (lat, mem, soak)
    return 0


def cmd_bench_convergence(args: argparse.Namespace) -> int:
    from policies import POLICIES
    from stream.bench import convergence

    settings = args.load_settings()
    policies = args.policies.split(",") if args.policies else sorted(POLICIES)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(
            f"unknown policies: {', '.join(unknown)}; known: {', '.join(sorted(POLICIES))}",
            file=sys.stderr,
        )
        return 2
    sims = args.sims.split(",")
    unknown = [s for s in sims if s not in convergence.SIMULATORS]
    if unknown:
        known = ", ".join(convergence.SIMULATORS)
        print(f"unknown simulators: {', '.join(unknown)}; known: {known}", file=sys.stderr)
        return 2
    features = convergence.FEATURES if args.features == "both" else (args.features,)
    results, peers = convergence.run(
        policies, sims, args.seeds, args.delay, Path(args.out), settings, features, args.rounds
    )
    print(convergence.print_table(results, peers))
    print(f"results in {args.out}/convergence.json, .md, .png")
    return 0


def cmd_bench_hotpath(args: argparse.Namespace) -> int:
    from stream.bench import hotpath

    domains = [int(d) for d in args.domains.split(",")]
    rows = hotpath.run(args.load_settings(), domains, args.batch, args.batches, Path(args.out))
    for r in rows:
        stages = ", ".join(f"{k} {v}" for k, v in r["stages"].items())
        print(f"{r['domains']} domains: {r['us_per_context']} µs per context ({stages})")
    print(f"results in {args.out}/hotpath.json, .md")
    return 0


def add_bench_commands(sub: Any, load_settings: Callable[[], Settings]) -> None:
    """Add ``bench`` and its subcommands; ``load_settings`` reads and reports the settings."""
    bench = command(sub, "bench", "benchmarks writing JSON, Markdown and PNG")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bench.set_defaults(load_settings=load_settings)
    conv = command(bench_sub, "convergence", "policies on simulated bandits (no broker)")
    conv.add_argument("--policies", default="", help="comma list (empty: every policy)")
    conv.add_argument("--sims", default=",".join(SIMULATORS), help="comma list of simulators")
    conv.add_argument(
        "--features",
        choices=("product", "raw", "both"),
        default="product",
        help="product: contexts through the service's feature pipeline at RL_FEATURE_DIM; "
        "raw: the simulator's feature matrix; both",
    )
    conv.add_argument("--seeds", type=int, default=3, help="seeds per simulator")
    conv.add_argument(
        "--rounds", type=int, default=None, help="rounds per run (default: each simulator's own)"
    )
    conv.add_argument("--delay", type=int, default=0, help="reward delay in events")
    conv.add_argument("--out", default="bench-out", help=OUT)
    conv.set_defaults(fn=cmd_bench_convergence)
    hot = command(
        bench_sub,
        "hotpath",
        "the batch processor's µs per context by stage, in process (no broker)",
    )
    hot.add_argument("--domains", default="100,1000", help="comma list of domain counts")
    hot.add_argument("--batch", type=int, default=1000, help="contexts per batch")
    hot.add_argument("--batches", type=int, default=100, help="batches timed per domain count")
    hot.add_argument("--out", default="bench-out", help=OUT)
    hot.set_defaults(fn=cmd_bench_hotpath)
    soak = command(
        bench_sub,
        "soak",
        "a long run through a real broker with garbage (the service as a process)",
    )
    soak.add_argument("--events", type=int, default=1_000_000, help="events to send")
    soak.add_argument("--garbage", type=float, default=0.01, help="share of garbage contexts")
    soak.add_argument("--seed", type=int, default=0, help="traffic seed")
    soak.add_argument(
        "--rate", type=float, default=10_000.0, help="events offered per second (0: unpaced)"
    )
    soak.add_argument("--out", default="bench-out", help=OUT)
    _broker_option(soak)
    soak.set_defaults(fn=cmd_bench_soak)
    for name, events, help_text in (
        ("throughput", 200_000, "contexts decided per second end to end, vs a passthrough"),
        ("latency", 100_000, "context produced -> decision consumed at a fixed load"),
        ("memory", 1_000_000, "the service's RSS over many events and domains"),
    ):
        b = command(bench_sub, name, help_text)
        b.add_argument("--events", type=int, default=events, help="contexts to send")
        b.add_argument(
            "--domains", type=int, default=1000 if name == "memory" else 100, help="domains"
        )
        if name != "throughput":
            b.add_argument(
                "--rate",
                type=float,
                default=0.0,
                help="offered contexts/s (0: latency at half the measured maximum, memory "
                "at 10000)",
            )
        b.add_argument("--out", default="bench-out", help=OUT)
        _broker_option(b)
        b.set_defaults(fn=cmd_bench_e2e)
    ball = command(bench_sub, "all", "every benchmark, one report (all.md)")
    ball.add_argument("--scale", type=float, default=1.0, help="event counts x this")
    ball.add_argument("--out", default="bench-out", help=OUT)
    _broker_option(ball)
    ball.set_defaults(fn=cmd_bench_all)

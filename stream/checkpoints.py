"""`bandit-stream checkpoint list | show | rollback`: the local store, looked at without
changing it (a rollback writes a new version, for the next start)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.argparsing import command
from stream.config import Settings
from stream.errors import CheckpointError
from stream.state.snapshot import BASELINE_ROLE
from stream.state.store import CheckpointStore


def _open_to_read(path: Path, keep: int) -> CheckpointStore | str:
    """The store opened read-only, or what is wrong with it."""
    try:
        store = CheckpointStore(path, keep, read_only=True)
    except CheckpointError as exc:
        return str(exc)
    problem = store.damage()
    if problem is None:
        return store
    store.close()
    return problem


def cmd_checkpoint(args: argparse.Namespace) -> int:
    settings = args.load_settings()
    state_dir = Path(args.state_dir or settings.state_dir)
    path = state_dir / "checkpoints.sqlite"
    if not path.is_file():
        # Reading must not create: a typo in RL_STATE_DIR would show an empty store.
        print(f"no checkpoints in {state_dir} (RL_STATE_DIR or --state-dir)", file=sys.stderr)
        return 1
    # Looking never changes a pod's state: a damaged store is reported and left in place
    # (the service itself moves it aside when it starts).
    store = _open_to_read(path, settings.checkpoint_keep)
    if isinstance(store, str) and Path(f"{path}-wal").exists():
        store = _open_to_read(path, settings.checkpoint_keep)  # a service started meanwhile
    if isinstance(store, str):
        print(f"checkpoint store {path} is damaged: {store}", file=sys.stderr)
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


def add_checkpoint_commands(sub: Any, load_settings: Callable[[], Settings]) -> None:
    """Add ``checkpoint`` and its subcommands; ``load_settings`` reads and reports the
    settings."""
    ck = command(sub, "checkpoint", "inspect checkpoints under RL_STATE_DIR, roll back")
    ck.set_defaults(load_settings=load_settings)
    ck.add_argument("--state-dir", type=Path, help="the state directory (default: RL_STATE_DIR)")
    ck_sub = ck.add_subparsers(dest="action", required=True)
    command(ck_sub, "list", "versions, newest first").set_defaults(fn=cmd_checkpoint)
    show = command(ck_sub, "show", "a domain's state in the newest (or a given) version")
    show.add_argument("domain", help="the domain to show")
    show.add_argument("--at", type=int, default=0, help="checkpoint version (0: the newest)")
    show.set_defaults(fn=cmd_checkpoint)
    rb = command(
        ck_sub,
        "rollback",
        "restore a domain's state from an older version "
        "(effective at the next start; run it with the service stopped)",
    )
    rb.add_argument("domain", help="the domain to restore")
    rb.add_argument("version", type=int, help="the checkpoint version to restore it from")
    rb.set_defaults(fn=cmd_checkpoint)

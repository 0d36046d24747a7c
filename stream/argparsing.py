"""The command line's parsers: every flag's help shows its default, and every subcommand's
own ``--help`` opens with its one-line summary."""

from __future__ import annotations

import argparse
from typing import Any


class Parser(argparse.ArgumentParser):
    """Every flag's help shows its default (subcommands' parsers are of this class too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def command(sub: Any, name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add subcommand ``name`` to ``sub`` (an ``add_subparsers()`` result), listed with
    ``summary`` and described by it unless ``description`` is given."""
    kwargs.setdefault("description", summary[0].upper() + summary[1:] + ".")
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, **kwargs)
    return parser

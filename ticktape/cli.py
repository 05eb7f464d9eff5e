"""The ``ticktape`` command line.

Each subcommand lives in ``ticktape/commands/<name>.py`` and exposes
``register(subparsers)``; the parser it adds sets ``func(args) -> int``.
Bad arguments give one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys

from .config import ConfigError

# Subcommand modules, in the order `ticktape --help` lists them.
COMMANDS = [
    "stack", "run", "topics", "produce", "process", "sink", "db", "indicators",
    "train", "models", "risk", "portfolio", "replay", "backtest", "status", "config",
]


class UsageError(argparse.ArgumentTypeError):
    """A bad argument value: one line, exit 2 (raised by argument types while parsing,
    or by a command after parsing)."""


def positive_int(text: str) -> int:
    """Argument type: a whole number > 0."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise UsageError(f"expected a positive whole number, not {text!r}")
    return n


def positive_float(text: str) -> float:
    """Argument type: a finite number > 0."""
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (0 < x < math.inf):
        raise UsageError(f"expected a positive number, not {text!r}")
    return x


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints usage too)
        sys.stderr.write(f"ticktape: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ticktape", description="event-sourced market-data and trading pipeline")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ticktape.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ticktape.commands.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .config import settings

    try:
        level = "DEBUG" if args.verbose else settings().log_level.upper()
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return int(args.func(args) or 0)
    except (UsageError, ConfigError) as e:
        sys.stderr.write(f"ticktape: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    # `python -m ticktape.cli`: run the importable module, whose UsageError the commands raise
    from ticktape.cli import main as _main

    sys.exit(_main())

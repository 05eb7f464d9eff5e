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

# Subcommand modules, in the order `ticktape --help` lists them, with the help line each
# module's parser has (tests/test_cli_errors.py checks they agree): only the command that
# runs is imported, so `ticktape --help` does not load XGBoost, psycopg and Faust.
COMMANDS = {
    "stack": "manage the local stack (broker, PostgreSQL, Redis)",
    "run": "the main job: local stack + simulator + the whole pipeline",
    "topics": "the topic catalog: list, describe, create, tail",
    "produce": "run a market-data source",
    "process": "run the stream processors",
    "sink": "write topics of record to PostgreSQL, or latest state to Redis",
    "db": "database schema: apply or show migrations",
    "indicators": "compute the indicator set over a CSV of bars",
    "train": "train an XGBoost direction model and register it",
    "models": "model registry: list, show, activate",
    "risk": "risk engine: live state, kill switch (halt, reset)",
    "portfolio": "portfolio: live positions and equity, rebuild from trading.fills",
    "replay": "re-publish a time range of a topic, a CSV file or a table",
    "backtest": "run a period through the whole pipeline, store and report it",
    "status": "health of the running pipeline (rate, lag, freshness, errors)",
    "config": "show the settings in force (what `ticktape run` uses), overrides marked",
}


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


def build_parser(load: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the full subparsers of the commands in ``load`` (None: all) and
    a help-only one for each other command."""
    parser = _Parser(prog="ticktape", description="event-sourced market-data and trading pipeline")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_line in COMMANDS.items():
        if load is None or name in load:
            importlib.import_module(f"ticktape.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand an argument list names (the first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(load=[name] if (name := _command_of(argv)) in COMMANDS else [])
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

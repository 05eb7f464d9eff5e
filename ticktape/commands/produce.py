"""`ticktape produce SOURCE`: market-data sources publishing to md.ticks / md.bars.*.

Each source is a module ``producers/<source>.py`` with ``add_arguments(parser,
parse_time, parse_speed)`` and ``run(args, settings) -> int``.
"""

from __future__ import annotations

import importlib
from datetime import datetime, timedelta, timezone

from ..cli import UsageError
from ..config import settings
from ..kafka_clients import check_reachable

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SOURCES = {
    "sim": "seeded market simulator (default source)",
    "websocket": "live WebSocket feed of a market-data provider",
    "yahoo": "Yahoo Finance 1-min bars: backfill, then poll",
}


def parse_time(text: str) -> int:
    """ISO-8601 (naive = UTC) → microseconds since the epoch."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"not an ISO-8601 time: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - EPOCH) // timedelta(microseconds=1)  # exact: no float on the way


def parse_speed(text: str) -> float | None:
    """'max' → None (as fast as possible); else a positive factor of real time."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise UsageError(f"speed must be a positive number or 'max', not {text!r}")
    return value


def register(sub):
    p = sub.add_parser("produce", help="run a market-data source")
    psub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for name, help_text in SOURCES.items():
        module = importlib.import_module(f"producers.{name}")
        sp = psub.add_parser(name, help=help_text)
        module.add_arguments(sp, parse_time, parse_speed)
        sp.set_defaults(func=lambda args, m=module: m.run(args, check_reachable(settings())))

"""Bar intervals: ``"<n><unit>"`` with unit s, m, h or d (``1s``, ``1m``, ``5m``, ``1h``, ``1d``)."""

from __future__ import annotations

import re

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"([1-9][0-9]*)([smhd])")

# Annualization convention: markets that trade around the clock (24/7, 365 days).
SECONDS_PER_YEAR = 365 * 24 * 3600


def interval_seconds(interval: object) -> int:
    """Length of an interval in seconds; ValueError for anything else than ``<n><s|m|h|d>``."""
    match = _INTERVAL.fullmatch(interval) if isinstance(interval, str) else None
    if match is None:
        raise ValueError(f"bad interval {interval!r}: expected <n><s|m|h|d>, e.g. 1s, 1m, 5m, 1h, 1d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def bars_per_year(seconds: float) -> float:
    """Bars of ``seconds`` each in a 24/7 year (365 days): the volatility annualization factor²."""
    if not seconds > 0:
        raise ValueError(f"bar length must be positive, got {seconds!r} s")
    return SECONDS_PER_YEAR / seconds

"""Market hours with no I/O: an exchange's sessions as [open, close) intervals of event
time (µs since the epoch), and the questions the pipeline asks of them.

Every answer is a function of an event's own time, never of the wall clock, so a replay
or a backtest decides exactly as the live run did.  The sessions come from an exchange
calendar (``ticktape.market_calendar`` builds them with ``exchange_calendars``); pre-
and post-market minutes, when configured, are already part of each interval.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np


class MarketHours:
    """Sessions of one calendar, sorted and disjoint, over a fixed range of days
    [first_us, last_us).  Outside that range the calendar cannot tell: the market counts
    as closed there (nothing published, no order), and the simulator's clock raises."""

    def __init__(self, name: str, sessions: Sequence[tuple[int, int]], first_us: int, last_us: int):
        if any(b <= a for a, b in sessions) or any(
            sessions[i][1] > sessions[i + 1][0] for i in range(len(sessions) - 1)
        ):
            raise ValueError(f"{name}: sessions must be sorted, disjoint and non-empty")
        self.name = name
        self.first_us, self.last_us = first_us, last_us
        self.opens = [a for a, _ in sessions]
        self.closes = [b for _, b in sessions]
        self._opens = np.asarray(self.opens, dtype=np.int64)
        # session time before each session (the simulator's clock runs on it)
        self._before = np.concatenate(([0], np.cumsum(np.subtract(self.closes, self.opens))))

    def covers(self, ts: int) -> bool:
        return self.first_us <= ts < self.last_us

    def session_index(self, ts: int) -> int:
        """Index of the last session opening at or before ``ts`` (-1: none)."""
        return bisect_right(self.opens, ts) - 1

    def is_open(self, ts: int) -> bool:
        i = self.session_index(ts)
        return i >= 0 and ts < self.closes[i] and self.covers(ts)

    def session_at(self, ts: int) -> tuple[int, int] | None:
        """(open, close) of the session ``ts`` is in, or None when the market is closed."""
        i = self.session_index(ts)
        return (self.opens[i], self.closes[i]) if i >= 0 and ts < self.closes[i] else None

    def next_close(self, ts: int) -> int | None:
        """The first close after ``ts`` (the close of its session if open)."""
        i = self.session_index(ts)
        if i >= 0 and ts < self.closes[i]:
            return self.closes[i]
        return self.closes[i + 1] if i + 1 < len(self.closes) else None

    def closes_in(self, after: int, upto: int) -> list[int]:
        """Closes in (after, upto]."""
        lo, hi = bisect_right(self.closes, after), bisect_right(self.closes, upto)
        return self.closes[lo:hi]

    def overlaps(self, start: int, end: int) -> bool:
        """Does [start, end) meet a session (a bar's window: a 1m bar in the session, a
        daily bar of a trading day)?"""
        i = bisect_right(self.closes, start)  # the first session closing after start
        return self.covers(start) and i < len(self.opens) and self.opens[i] < end

    def session_clock(self, start: int, elapsed_us: np.ndarray) -> np.ndarray:
        """The instants ``elapsed_us`` of session time after ``start`` (or after the next
        open when ``start`` is outside a session): closed time is skipped."""
        if not self.covers(start):
            raise ValueError(f"{start} µs is outside the {self.name} calendar's range")
        i = self.session_index(start)
        base = self._before[i + 1] if i < 0 or start >= self.closes[i] else self._before[i] + start - self.opens[i]
        t = base + np.asarray(elapsed_us, dtype=np.int64)
        j = np.searchsorted(self._before, t, side="right") - 1
        if (j >= len(self.opens)).any():
            raise ValueError(f"session time past the {self.name} calendar's range")
        return self._opens[j] + (t - self._before[j])

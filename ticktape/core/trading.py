"""Pieces shared by strategy, risk, paper execution and portfolio.

Conventions of the trading core:

* Each stage is a state object plus functions ``on_<event>(state, event) -> list[dict]``
  that update the state *in place* (no copy per event, for speed) and return the
  output events (plain dicts with exactly the fields of ``schemas/*.avsc``).
* Time is the events' ``ts`` (int microseconds, UTC); nothing reads a clock.
* ``state.to_dict()`` is plain JSON-able data (floats round-trip exactly through
  ``json``) and ``<State>.from_dict(d)`` restores it, so a worker that restarts from a
  table changelog continues exactly where it stopped.
* Output ``event_id`` values derive from input ids, so a replay yields the same ids.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta, timezone

BUY = "BUY"
SELL = "SELL"
US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def side_sign(side: str) -> float:
    if side == BUY:
        return 1.0
    if side == SELL:
        return -1.0
    raise ValueError(f"side must be BUY or SELL, got {side!r}")


def side_of(delta: float) -> str:
    return BUY if delta > 0 else SELL


def utc_day(ts: int) -> int:
    """Days since the epoch of an event time: the daily-loss baseline rolls when it changes."""
    return ts // US_PER_DAY


def iso(ts: int) -> str:
    """2024-01-02T14:30:00.000000Z (exact: integer arithmetic, no float seconds)."""
    return (_EPOCH + timedelta(microseconds=ts)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tick_price(tick: dict) -> float | None:
    """The price a tick marks its symbol at: last trade, else the quote mid, else None."""
    price = tick.get("price")
    if price is not None:
        return price
    bid, ask = tick.get("bid"), tick.get("ask")
    if bid is not None and ask is not None:
        return (bid + ask) / 2.0
    return None


class RecentIds:
    """The last ``capacity`` event ids seen: drops a redelivered event (at-least-once input)."""

    __slots__ = ("capacity", "_order", "_set")

    def __init__(self, capacity: int, ids=()):
        self.capacity = capacity
        self._order = deque(ids, maxlen=capacity)
        self._set = set(self._order)

    def seen(self, event_id: str) -> bool:
        """True if ``event_id`` was seen before; otherwise remember it and return False."""
        if event_id in self._set:
            return True
        if len(self._order) == self.capacity:
            self._set.discard(self._order[0])
        self._order.append(event_id)
        self._set.add(event_id)
        return False

    def to_list(self) -> list[str]:
        return list(self._order)

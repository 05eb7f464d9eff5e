"""What a decoded event must satisfy before any stage or sink acts on it.

``Serde.decode`` already bounds the strings (``ticktape.serde.MAX_STRING``); these are
the value rules, the same as the database's CHECK constraints plus what SQL lets pass
(in PostgreSQL ``'NaN' >= 0`` is true):

* every double is finite (top-level fields, a map's values, a TickBatch's columns);
* prices, sizes, volumes, quantities and commissions are not negative; an order's and a
  fill's quantity is positive; high >= low; a window ends after it starts; p_up is a
  probability; RSI is in [0, 100] (sides, order types and trading states are Avro enums);
* an event of an account names a known one: ``TRADING_ACCOUNT`` or an account of the
  risk file;
* market data (a tick, a TickBatch's ticks, a heartbeat, a bar) is at most
  ``MAX_EVENT_AHEAD_MS`` ahead of the wall clock: one far-future timestamp would move a
  watermark, a symbol's indicators or a Redis key past every later event.

Every stage's decode and both sinks call ``Validator.check``; a failure is an
``Invalid`` (a ``SerdeError``) whose message is the dead letter's reason.
"""

from __future__ import annotations

import math
import time

from .config import Settings
from .core.trading import iso
from .serde import SerdeError

_NON_NEGATIVE = {
    "tick": ("price", "size", "bid", "ask", "bid_size", "ask_size"),
    "bar": ("open", "low", "close", "volume", "vwap", "trade_count"),
    "signal": ("quantity", "reference_price"),
    "order": ("limit_price", "reference_price"),
    "fill": ("price", "commission"),
    "equity": ("gross_exposure",),
}
_POSITIVE = {"order": ("quantity",), "fill": ("quantity",), "prediction": ("horizon",)}
_RANGES = {"prediction": (("p_up", 0.0, 1.0),), "indicator_set": (("rsi_5", 0.0, 100.0), ("rsi_14", 0.0, 100.0))}
_BATCH_COLUMNS = ("price", "size", "bid", "ask", "bid_size", "ask_size")
_MARKET_DATA = ("tick", "tick_batch", "heartbeat", "bar")


class Invalid(SerdeError):
    """A decoded event whose values cannot be true."""


def _finite(record: dict) -> None:
    for name, v in record.items():
        if type(v) is float:
            if not math.isfinite(v):
                raise Invalid(f"{name} is {v!r}: not a finite number")
        elif type(v) is dict:  # a map (prediction features) or a TickBatch's columns
            for k, x in v.items():
                bad = [y for y in (x if type(x) is list else (x,)) if type(y) is float and not math.isfinite(y)]
                if bad:
                    raise Invalid(f"{name}.{k} holds {bad[0]!r}: not a finite number")


def ahead_reason(ts: int, now_us: int, ahead_us: int) -> str | None:
    """Why an event time is too far ahead of the wall clock, or None."""
    if ts <= now_us + ahead_us:
        return None
    return (
        f"event time {iso(ts)} is more than MAX_EVENT_AHEAD_MS ({ahead_us // 1000} ms) ahead of "
        f"the wall clock ({iso(now_us)})"
    )


class Validator:
    def __init__(self, s: Settings, clock=time.time):
        from .risk_config import load_risk_limits, risk_config_path

        self.accounts = frozenset({s.trading_account, *load_risk_limits(risk_config_path(s)).accounts})
        self.ahead_us = s.max_event_ahead_ms * 1000
        self.clock = clock

    def check(self, event_type: str, record: dict) -> None:
        """Raise ``Invalid`` with the reason when ``record`` breaks a rule."""
        _finite(record)
        if event_type in _MARKET_DATA:
            ts = max(record["ticks"]["ts"], default=0) if event_type == "tick_batch" else record["ts"]
            reason = ahead_reason(ts, int(self.clock() * 1e6), self.ahead_us)
            if reason:
                raise Invalid(reason)
        if event_type == "tick_batch":
            cols = record["ticks"]
            for name in _BATCH_COLUMNS:
                if any(v is not None and v < 0 for v in cols.get(name, ())):
                    raise Invalid(f"ticks.{name} holds a negative value")
            return
        for name in _NON_NEGATIVE.get(event_type, ()):
            v = record.get(name)
            if v is not None and v < 0:
                raise Invalid(f"{name} is {v!r}: must not be negative")
        for name in _POSITIVE.get(event_type, ()):
            v = record.get(name)
            if v is not None and v <= 0:
                raise Invalid(f"{name} is {v!r}: must be positive")
        for name, low, high in _RANGES.get(event_type, ()):
            v = record.get(name)
            if v is not None and not low <= v <= high:
                raise Invalid(f"{name} is {v!r}: must be in [{low:g}, {high:g}]")
        if event_type == "bar":
            if record["high"] < record["low"]:
                raise Invalid(f"high {record['high']!r} is below low {record['low']!r}")
            if record["window_end"] <= record["window_start"]:
                raise Invalid("window_end is not after window_start")
        account = record.get("account")
        if account is not None and account not in self.accounts:
            raise Invalid(f"unknown account {account!r} (known: {', '.join(sorted(self.accounts))})")

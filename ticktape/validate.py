"""What a decoded event must satisfy before any stage or sink acts on it.

``Serde.decode`` already bounds the strings (``ticktape.serde.MAX_STRING``); these are
the value rules, the same as the database's CHECK constraints plus what SQL lets pass
(in PostgreSQL ``'NaN' >= 0`` is true):

* every double is finite (top-level fields, a map's values, a TickBatch's columns);
* prices, sizes, volumes, quantities and commissions are not negative; an order's and a
  fill's quantity is positive; high >= low; a window ends after it starts; p_up is a
  probability; RSI is in [0, 100] (sides, order types and trading states are Avro enums);
* an event of an account names a known one: ``TRADING_ACCOUNT`` or an account of the
  risk file.

Every stage's decode and both sinks call ``Validator.check``; a failure is an
``Invalid`` (a ``SerdeError``) whose message is the dead letter's reason.
"""
from __future__ import annotations

import math

from .config import Settings
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
_RANGES = {"prediction": (("p_up", 0.0, 1.0),),
           "indicator_set": (("rsi_5", 0.0, 100.0), ("rsi_14", 0.0, 100.0))}
_BATCH_COLUMNS = ("price", "size", "bid", "ask", "bid_size", "ask_size")


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


class Validator:
    def __init__(self, s: Settings):
        from .risk_config import load_risk_limits, risk_config_path

        self.accounts = frozenset({s.trading_account, *load_risk_limits(risk_config_path(s)).accounts})

    def check(self, event_type: str, record: dict) -> None:
        """Raise ``Invalid`` with the reason when ``record`` breaks a rule."""
        _finite(record)
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

"""Technical indicators per symbol per closed bar: incremental, exact, serializable.

One engine, two ways to drive it:

* ``IndicatorState`` — one symbol; ``update(bar)`` folds one Bar event dict in O(1) and
  returns the 20 values (``None`` while an indicator's lookback is not filled).  Its
  state is a small JSON-able dict (``to_state``/``from_state``, floats round-trip
  exactly) so a stream processor can keep it in a changelogged table and resume
  exactly where it stopped; a bar whose window start is not after the last one folded
  (a redelivery) is ignored (``update`` returns None).  Keep one state per (symbol,
  interval); emit ``indicator_event(bar, values)``; a bar with unusable numbers raises
  ``BarError`` before the state is touched.  The state holds the last 200 closes (SMA
  200 needs them), the last 20 log returns and 18 running values.
* ``compute_batch`` — many symbols at once (the CSV command, backtests, the benchmark):
  the same step function runs over numpy columns, one symbol per column, the k-th bar
  of every symbol in one vectorized step.

* ``Indicator`` — the base of every indicator (one class each: ``update`` from a bar,
  ``ready``, ``value``, state ``to_dict``/``from_dict``); a user indicator is one such
  class, loaded by name (``INDICATORS``, ``ticktape.api.load_indicators``).  ``TaLib`` puts
  the built-in 20 on it; ``SymbolIndicators`` folds a symbol's bars into both, the user
  outputs going to the IndicatorSet's ``extra``; ``user_values`` is their batch loop.

The two built-in paths are one step written twice: ``_advance`` over numpy columns (the
batch) and ``_fold``, the same operations in the same order on Python floats, unrolled
for one symbol (a generic step over a scalar backend cost three times as much per bar).
Every operation is correctly rounded or done in the same order, numpy's ``log`` in
both, so the two give bit-identical results (``tests/test_indicators.py`` holds them so).

Work per bar is constant: running sums, Wilder/EMA recursions, ring buffers; the two
standard deviations are fixed 20-value two-pass sums over a ring (never over history).
Accuracy: the TA-Lib columns follow TA-Lib's seeding and order of arithmetic and agree
with it to ~1e-12 relative or better (the tests require 1e-9); they are not always equal
to the last bit because TA-Lib's current builds fuse multiply-adds and compute their
windowed variance their own cancellation-free way.

Definitions (``n`` bars; a value is null until its lookback is filled, exactly where
TA-Lib's output is NaN):

``sma_N``            TA-Lib SMA: running sum (add the newest, divide, drop the oldest).
``ema_N``            TA-Lib EMA: seeded with the SMA of the first N closes, then
                     ``ema += (close - ema) * 2/(N+1)``.
``rsi_N``            TA-Lib RSI (Wilder): average gain/loss of the first N changes, then
                     ``avg = (avg*(N-1) + x)/N``; 0 when both averages are 0.
``macd*``            TA-Lib MACD(12, 26, 9): line = EMA12 - EMA26 where, as in TA-Lib, the
                     fast EMA is seeded with the SMA of the 12 closes ending where the
                     slow EMA starts (bars 15-26), not of the first 12; the signal is an
                     EMA 9 of the line; all three start at bar 34; hist = line - signal.
``bb_*``             TA-Lib BBANDS(20, 2, 2, SMA): middle = sma_20, bands = middle ± 2·σ,
                     σ = population std of the last 20 closes, two-pass (a running sum of
                     squares would cancel to noise on large, quiet prices).
``atr_14``           TA-Lib ATR: true range from bar 2, SMA of the first 14, then Wilder.
``momentum_N``       TA-Lib MOM: close - close N bars ago.
``obv``              TA-Lib OBV: starts at the first bar's volume, ± volume on up/down closes.
``volatility_20``    sample std (ddof=1) of the last 20 log returns ln(close/prev close),
                     × sqrt(bars per year); bars per year = 365·24·3600 / bar seconds (a
                     24/7 calendar, see ``ticktape.core.intervals``).  Two-pass over a
                     ring of the 20 returns.
``vwap``             session VWAP: Σ(price·volume)/Σvolume since the session began, where
                     price is the bar's own VWAP (typical price (h+l+c)/3 when the bar has
                     none, e.g. from a CSV) and a session is a UTC day of the bar's window
                     start by default (``session_seconds``); null while Σvolume is 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .intervals import bars_per_year, interval_seconds

INDICATOR_NAMES = (
    "sma_10",
    "sma_20",
    "sma_50",
    "sma_200",
    "ema_12",
    "ema_26",
    "rsi_5",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "atr_14",
    "volatility_20",
    "momentum_5",
    "momentum_20",
    "vwap",
    "obv",
)
(
    O_SMA10,
    O_SMA20,
    O_SMA50,
    O_SMA200,
    O_EMA12,
    O_EMA26,
    O_RSI5,
    O_RSI14,
    O_MACD,
    O_SIGNAL,
    O_HIST,
    O_BB_UP,
    O_BB_MID,
    O_BB_LOW,
    O_ATR14,
    O_VOL20,
    O_MOM5,
    O_MOM20,
    O_VWAP,
    O_OBV,
) = range(20)

# State fields of one symbol (a float each), by position.
STATE_FIELDS = (
    "sma_10_sum",
    "sma_20_sum",
    "sma_50_sum",
    "sma_200_sum",
    "ema_12",
    "ema_26",
    "macd_fast",
    "macd_signal",
    "gain_5",
    "loss_5",
    "gain_14",
    "loss_14",
    "atr_14",
    "obv",
    "session",
    "session_pv",
    "session_volume",
    "annualization",
)
(
    S_SMA10,
    S_SMA20,
    S_SMA50,
    S_SMA200,
    S_EMA12,
    S_EMA26,
    S_FAST,
    S_SIGNAL,
    S_GAIN5,
    S_LOSS5,
    S_GAIN14,
    S_LOSS14,
    S_ATR,
    S_OBV,
    S_SESSION,
    S_PV,
    S_VOLUME,
    S_ANN,
) = range(len(STATE_FIELDS))

CLOSES = 200  # ring of the last closes: the longest window (SMA 200)
RETURNS = 20  # ring of the last log returns (volatility 20)
STATE_VERSION = 1
NAN = float("nan")
_INF = float("inf")

_SMAS = ((S_SMA10, 10, O_SMA10), (S_SMA20, 20, O_SMA20), (S_SMA50, 50, O_SMA50), (S_SMA200, 200, O_SMA200))
_RSIS = ((S_GAIN5, S_LOSS5, 5, O_RSI5), (S_GAIN14, S_LOSS14, 14, O_RSI14))
_FAST_START = 26 - 12  # TA-Lib seeds MACD's fast EMA on bars 15..26 (0-based 14..25)
_SIGNAL_START = 26 - 1  # the first MACD line value (0-based bar 25)
_K12, _K26, _K9 = 2.0 / 13, 2.0 / 27, 2.0 / 10  # the EMA factors 2/(N+1)
_log = np.log


class BarError(ValueError):
    """A bar that cannot be folded; ``row`` is its index in a batch (None for one bar)."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


def _sum20(r):
    """Σ of 20 floats in a fixed pairwise order (left to right would round differently)."""
    (r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, r14, r15, r16, r17, r18, r19) = r
    b0 = (r0 + r10) + (r5 + r15)
    b1 = (r1 + r11) + (r6 + r16)
    b2 = (r2 + r12) + (r7 + r17)
    b3 = (r3 + r13) + (r8 + r18)
    b4 = (r4 + r14) + (r9 + r19)
    return ((b0 + b2) + (b1 + b3)) + b4


def _sum20_columns(r):
    """``_sum20`` of each column of a (20, m) array, in the same order."""
    a = r[:10] + r[10:]
    b = a[:5] + a[5:]
    return ((b[0] + b[2]) + (b[1] + b[3])) + b[4]


def _window(ring, i: int, n: int):
    """The last n rows of a ring (bar i is the newest), oldest first."""
    return ring[np.arange(i - n + 1, i + 1) % len(ring)]


def _ema_fold(acc, x, j: int, n: int, k: float):
    """TA-Lib's EMA after its j-th input (0-based): a running sum until the seed."""
    if j < n - 1:
        return acc + x
    if j == n - 1:
        return (acc + x) / n
    return (x - acc) * k + acc


def _wilder(gain, loss, up, down, i: int, n: int):
    """TA-Lib RSI's average gain and loss after change number ``i`` (bar i): sums of the
    first n changes, their mean at change n, then Wilder's ``(avg*(n-1) + x)/n``."""
    if i > n:
        gain, loss = gain * (n - 1) + up, loss * (n - 1) - down
    else:
        gain, loss = gain + up, loss - down
    if i >= n:
        gain, loss = gain / n, loss / n
    return gain, loss


def _atr(atr, true_range, i: int):
    """TA-Lib ATR(14) after bar ``i``'s true range: their sum, its mean at bar 14, then Wilder."""
    if i < 14:
        return atr + true_range
    if i == 14:
        return (atr + true_range) / 14
    return (atr * 13 + true_range) / 14


def _rsi(gain, loss):
    total = gain + loss
    moved = total > 0.0  # no movement at all: TA-Lib gives 0
    return np.where(moved, 100.0 * (gain / np.where(moved, total, 1.0)), 0.0)


def _sum_sq_dev20(window):
    """Σ(x - mean)² of 20 values per column: two-pass, the stable way to a windowed variance."""
    d = window - _sum20_columns(window) / 20
    return _sum20_columns(d * d)


def _advance(v, closes, returns, i: int, close, high, low, volume, price, session, out):
    """Fold bar number ``i`` (0-based, per symbol) into state ``v``/``closes``/``returns``.

    Writes the indicators whose lookback is filled into ``out`` (indexed by O_*); the
    others are left as they are (NaN).  The TA-Lib indicators mirror TA-Lib's seeding
    and order of arithmetic.
    """
    prev = closes[(i - 1) % CLOSES]  # previous close (meaningless when i == 0, unused)
    closes[i % CLOSES] = close
    # Ring slots not yet written hold 0.0, so "dropping" one before a window fills is a no-op.
    for slot, n, o in _SMAS:
        total = v[slot] + close
        if i >= n - 1:
            out[o] = total / n
        v[slot] = total - closes[(i - n + 1) % CLOSES]

    if i >= 19:
        # Population std of the 20 closes, two-pass (no running sum of squares to cancel);
        # the middle band is sma_20 itself, as in TA-Lib.
        mid = out[O_SMA20]
        dev = np.sqrt(_sum_sq_dev20(_window(closes, i, 20)) / 20) * 2.0
        out[O_BB_UP] = mid + dev
        out[O_BB_MID] = mid
        out[O_BB_LOW] = mid - dev

    v[S_EMA12] = _ema_fold(v[S_EMA12], close, i, 12, 2.0 / 13)
    v[S_EMA26] = _ema_fold(v[S_EMA26], close, i, 26, 2.0 / 27)
    if i >= 11:
        out[O_EMA12] = v[S_EMA12]
    if i >= 25:
        out[O_EMA26] = v[S_EMA26]
    if i >= _FAST_START:
        v[S_FAST] = _ema_fold(v[S_FAST], close, i - _FAST_START, 12, 2.0 / 13)
    if i >= _SIGNAL_START:
        line = v[S_FAST] - v[S_EMA26]
        v[S_SIGNAL] = _ema_fold(v[S_SIGNAL], line, i - _SIGNAL_START, 9, 2.0 / 10)
        if i >= _SIGNAL_START + 8:
            out[O_MACD] = line
            out[O_SIGNAL] = v[S_SIGNAL]
            out[O_HIST] = line - v[S_SIGNAL]

    if i >= 5:
        out[O_MOM5] = close - closes[(i - 5) % CLOSES]
    if i >= 20:
        out[O_MOM20] = close - closes[(i - 20) % CLOSES]

    if i >= 1:
        change = close - prev
        up = np.maximum(change, 0.0)
        down = np.minimum(change, 0.0)
        for gain_slot, loss_slot, n, o in _RSIS:
            v[gain_slot], v[loss_slot] = gain, loss = _wilder(v[gain_slot], v[loss_slot], up, down, i, n)
            if i >= n:
                out[o] = _rsi(gain, loss)

        true_range = np.maximum(np.maximum(high - low, np.abs(prev - high)), np.abs(prev - low))
        v[S_ATR] = atr = _atr(v[S_ATR], true_range, i)
        if i >= 14:
            out[O_ATR14] = atr

        returns[i % RETURNS] = np.log(close / prev)
        if i >= RETURNS:
            window = _window(returns, i, RETURNS)
            out[O_VOL20] = np.sqrt(_sum_sq_dev20(window) / (RETURNS - 1)) * v[S_ANN]

        v[S_OBV] = v[S_OBV] + np.where(close > prev, volume, np.where(close < prev, -volume, 0.0))
    else:
        v[S_OBV] = volume
    out[O_OBV] = v[S_OBV]

    new_session = session != v[S_SESSION]
    pv = np.where(new_session, 0.0, v[S_PV]) + price * volume
    vol = np.where(new_session, 0.0, v[S_VOLUME]) + volume
    v[S_SESSION] = session
    v[S_PV] = pv
    v[S_VOLUME] = vol
    traded = vol > 0.0
    out[O_VWAP] = np.where(traded, pv / np.where(traded, vol, 1.0), NAN)


def _fold(v: list[float], closes: list[float], returns: list[float], i: int, close, high, low, volume, price, session):
    """``_advance`` for one symbol on Python floats, unrolled: the same operations in the
    same order (so the same bits, ``tests/test_indicators.py`` holds them equal), without
    a backend's calls, loops over the windows or per-bar lists.  The 20 values (NaN: not
    yet filled); negative ring indices are the ring's modulo."""
    out = [NAN] * 20
    k = i % CLOSES
    prev = closes[k - 1]  # previous close (meaningless when i == 0, unused)
    closes[k] = close
    # Ring slots not yet written hold 0.0, so "dropping" one before a window fills is a no-op.
    for slot, n, o in _SMAS:
        total = v[slot] + close
        if i >= n - 1:
            out[o] = total / n
        v[slot] = total - closes[k - n + 1]
    if i >= 19:
        mid = out[O_SMA20]
        start = k - 19
        w = closes[start : k + 1] if start >= 0 else closes[start:] + closes[: k + 1]
        mean = _sum20(w) / 20
        dev = math.sqrt(_sum20([(x - mean) * (x - mean) for x in w]) / 20) * 2.0
        out[O_BB_UP] = mid + dev
        out[O_BB_MID] = mid
        out[O_BB_LOW] = mid - dev

    if i > 25:  # past every seed: the common case first
        ema12 = v[S_EMA12] = (close - v[S_EMA12]) * _K12 + v[S_EMA12]
        ema26 = v[S_EMA26] = (close - v[S_EMA26]) * _K26 + v[S_EMA26]
        fast = v[S_FAST] = (close - v[S_FAST]) * _K12 + v[S_FAST]
        out[O_EMA12], out[O_EMA26] = ema12, ema26
        line = fast - ema26
        j = i - _SIGNAL_START
        signal = v[S_SIGNAL]
        signal = v[S_SIGNAL] = (
            signal + line if j < 8 else (signal + line) / 9 if j == 8 else (line - signal) * _K9 + signal
        )
        if j >= 8:
            out[O_MACD] = line
            out[O_SIGNAL] = signal
            out[O_HIST] = line - signal
    else:
        v[S_EMA12] = _ema_fold(v[S_EMA12], close, i, 12, _K12)
        v[S_EMA26] = _ema_fold(v[S_EMA26], close, i, 26, _K26)
        if i >= 11:
            out[O_EMA12] = v[S_EMA12]
        if i >= 25:
            out[O_EMA26] = v[S_EMA26]
        if i >= _FAST_START:
            v[S_FAST] = _ema_fold(v[S_FAST], close, i - _FAST_START, 12, _K12)
        if i >= _SIGNAL_START:
            v[S_SIGNAL] = _ema_fold(v[S_SIGNAL], v[S_FAST] - v[S_EMA26], 0, 9, _K9)

    if i >= 5:
        out[O_MOM5] = close - closes[k - 5]
    if i >= 20:
        out[O_MOM20] = close - closes[k - 20]

    if i >= 1:
        change = close - prev
        up = change if change > 0.0 else 0.0  # closes > 0: change is never -0.0
        down = change if change < 0.0 else 0.0
        for gain_slot, loss_slot, n, o in _RSIS:
            v[gain_slot], v[loss_slot] = gain, loss = _wilder(v[gain_slot], v[loss_slot], up, down, i, n)
            if i >= n:
                total = gain + loss
                out[o] = 100.0 * (gain / total) if total > 0.0 else 0.0

        true_range = max(max(high - low, abs(prev - high)), abs(prev - low))
        v[S_ATR] = atr = _atr(v[S_ATR], true_range, i)
        if i >= 14:
            out[O_ATR14] = atr

        r = i % RETURNS
        returns[r] = float(_log(close / prev))  # numpy's log, as the batch path's: identical bits
        if i >= RETURNS:
            w = returns[r + 1 :] + returns[: r + 1]
            mean = _sum20(w) / 20
            out[O_VOL20] = math.sqrt(_sum20([(x - mean) * (x - mean) for x in w]) / (RETURNS - 1)) * v[S_ANN]

        v[S_OBV] = v[S_OBV] + (volume if close > prev else -volume if close < prev else 0.0)
    else:
        v[S_OBV] = volume
    out[O_OBV] = v[S_OBV]

    if session != v[S_SESSION]:
        pv = 0.0 + price * volume
        vol = 0.0 + volume
    else:
        pv = v[S_PV] + price * volume
        vol = v[S_VOLUME] + volume
    v[S_SESSION] = session
    v[S_PV] = pv
    v[S_VOLUME] = vol
    if vol > 0.0:
        out[O_VWAP] = pv / vol
    return out


def _initial_fields(annualization: float) -> list[float]:
    fields = [0.0] * len(STATE_FIELDS)
    fields[S_SESSION] = -1.0  # no session yet: the first bar opens one
    fields[S_ANN] = annualization
    return fields


def _annualization(seconds: float | None) -> float:
    return NAN if seconds is None else math.sqrt(bars_per_year(seconds))


def _finite_positive(x):
    return (x > 0.0) & (x < _INF)


def _finite_nonnegative(x):
    return (x >= 0.0) & (x < _INF)


_CHECKS = (
    ("open", _finite_positive),
    ("high", _finite_positive),
    ("low", _finite_positive),
    ("close", _finite_positive),
    ("volume", _finite_nonnegative),
)


def _bar_problem(values: Mapping[str, float]) -> str | None:
    """Why a bar's numbers cannot be folded, or None; prices > 0 (log returns), volume >= 0."""
    for name, ok in _CHECKS:
        if not ok(values[name]):
            wanted = "number >= 0" if name == "volume" else "positive number"
            return f"{name} must be a finite {wanted}, got {values[name]!r}"
    if values.get("vwap") is not None and not _finite_positive(values["vwap"]):
        return f"vwap must be a finite positive number, got {values['vwap']!r}"
    return None


class IndicatorState:
    """Indicators of one symbol at one interval, folded bar by bar (see the module doc)."""

    __slots__ = ("interval", "session_seconds", "count", "last_window_start", "_fields", "_closes", "_returns")

    def __init__(self, interval: str, session_seconds: int = 86400):
        if not (isinstance(session_seconds, int) and session_seconds > 0):
            raise ValueError(f"session_seconds must be a positive int, got {session_seconds!r}")
        self.interval = interval
        self.session_seconds = session_seconds
        self.count = 0  # bars folded
        self.last_window_start: int | None = None
        self._fields = _initial_fields(_annualization(interval_seconds(interval)))
        self._closes = [0.0] * CLOSES
        self._returns = [0.0] * RETURNS

    def update(self, bar: Mapping) -> dict[str, float | None] | None:
        """Fold one Bar event dict; the 20 values by name, or None for a redelivered bar
        (window start not after the last one folded).  BarError for unusable numbers."""
        if bar["interval"] != self.interval:
            raise BarError(f"bar interval {bar['interval']!r} != state interval {self.interval!r}")
        window_start = bar["window_start"]
        if self.last_window_start is not None and window_start <= self.last_window_start:
            return None
        high, low, close, volume, vwap = bar["high"], bar["low"], bar["close"], bar["volume"], bar.get("vwap")
        if not (
            0.0 < bar["open"] < _INF
            and 0.0 < high < _INF
            and 0.0 < low < _INF
            and 0.0 < close < _INF
            and 0.0 <= volume < _INF
            and (vwap is None or 0.0 < vwap < _INF)
        ):  # _bar_problem's checks, inline: it names the first that fails
            raise BarError(f"{bar.get('symbol', '?')} bar at {window_start}: {_bar_problem(bar)}")
        high, low, close = float(high), float(low), float(close)
        price = float(vwap) if vwap is not None else (high + low + close) / 3.0
        session = float(window_start // (self.session_seconds * 1_000_000))
        out = _fold(
            self._fields, self._closes, self._returns, self.count, close, high, low, float(volume), price, session
        )
        self.count += 1
        self.last_window_start = window_start
        return {name: (None if x != x else x) for name, x in zip(INDICATOR_NAMES, out)}

    def to_state(self) -> dict:
        """A JSON-able dict; ``from_state`` of it continues bit for bit."""
        return {
            "version": STATE_VERSION,
            "interval": self.interval,
            "session_seconds": self.session_seconds,
            "count": self.count,
            "last_window_start": self.last_window_start,
            "fields": list(self._fields),
            "closes": list(self._closes),
            "returns": list(self._returns),
        }

    @classmethod
    def from_state(cls, state: Mapping) -> IndicatorState:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"indicator state version {state.get('version')!r}, expected {STATE_VERSION}")
        self = cls(state["interval"], state["session_seconds"])
        sizes = {"fields": len(STATE_FIELDS), "closes": CLOSES, "returns": RETURNS}
        for key, size in sizes.items():
            if len(state[key]) != size:
                raise ValueError(f"indicator state {key!r} has {len(state[key])} values, expected {size}")
        self.count = int(state["count"])
        self.last_window_start = state["last_window_start"]
        self._fields = [float(x) for x in state["fields"]]
        self._closes = [float(x) for x in state["closes"]]
        self._returns = [float(x) for x in state["returns"]]
        return self


def indicator_event(
    bar: Mapping, values: Mapping[str, float | None], extra: Mapping[str, float | None] | None = None
) -> dict:
    """The IndicatorSet event (schemas/indicator_set.v2.avsc) of a bar, its values and its
    user indicators' outputs (``extra``)."""
    event = {
        "event_id": f"{bar['symbol']}:{bar['interval']}:{bar['window_start']}",
        "symbol": bar["symbol"],
        "interval": bar["interval"],
        "ts": bar["window_end"],
        "close": float(bar["close"]),
        "volume": float(bar["volume"]),
    }
    for name in INDICATOR_NAMES:
        event[name] = values[name]
    event["extra"] = dict(extra or {})
    return event


def compute_batch(
    symbols: Sequence[str],
    window_start,
    open_,
    high,
    low,
    close,
    volume,
    seconds_per_bar: Mapping[str, float | None],
    vwap=None,
    session_seconds: int = 86400,
) -> np.ndarray:
    """Indicators of many bars at once: an (N, 20) float array in input row order, NaN = null.

    Rows of different symbols may interleave; each symbol's rows must have strictly
    increasing ``window_start`` (micros).  ``seconds_per_bar[symbol]`` sets the volatility
    annualization (None: unknown, volatility stays null).  ``vwap`` None: typical price.
    Same results, bit for bit, as feeding each symbol's bars to an ``IndicatorState``.
    """
    n_rows = len(symbols)
    ws = np.asarray(window_start, dtype=np.int64)
    cols = {
        name: np.asarray(a, dtype=np.float64)
        for name, a in (("open", open_), ("high", high), ("low", low), ("close", close), ("volume", volume))
    }
    if vwap is not None:
        cols["vwap"] = np.asarray(vwap, dtype=np.float64)
    result = np.full((n_rows, len(INDICATOR_NAMES)), NAN)
    if n_rows == 0:
        return result

    ok = np.ones(n_rows, dtype=bool)
    for name, check in _CHECKS + ((("vwap", _finite_positive),) if vwap is not None else ()):
        ok &= check(cols[name])
    if not ok.all():
        row = int(np.argmin(ok))
        problem = _bar_problem({k: float(a[row]) for k, a in cols.items()})
        assert problem is not None  # the row failed one of these same checks
        raise BarError(problem, row)

    codes_of: dict[str, int] = {}
    codes = np.fromiter((codes_of.setdefault(s, len(codes_of)) for s in symbols), np.int64, n_rows)
    names = list(codes_of)
    order = np.argsort(codes, kind="stable")  # rows grouped by symbol, input order within
    counts = np.bincount(codes)
    starts = np.cumsum(counts) - counts
    seq = np.empty(n_rows, dtype=np.int64)
    seq[order] = np.arange(n_rows) - starts[codes[order]]

    same = codes[order][1:] == codes[order][:-1]
    late = np.flatnonzero(same & (ws[order][1:] <= ws[order][:-1]))
    if late.size:
        row = int(order[1:][late].min())
        raise BarError(f"bars of {symbols[row]} out of time order: this one does not start after the previous one", row)

    # Columns by decreasing bar count: the symbols still active at step k are a prefix.
    by_count = np.argsort(-counts, kind="stable")
    col = np.empty_like(by_count)
    col[by_count] = np.arange(len(names))
    n_steps, n_symbols = int(counts.max()), len(names)
    active = n_symbols - np.searchsorted(np.sort(counts), np.arange(n_steps), side="right")
    where = (seq, col[codes])
    row_at = np.full((n_steps, n_symbols), -1, dtype=np.int64)
    row_at[where] = np.arange(n_rows)

    def grid(values):
        g = np.zeros((n_steps, n_symbols))
        g[where] = values
        return g

    g_high, g_low, g_close, g_volume = (grid(cols[k]) for k in ("high", "low", "close", "volume"))
    g_price = grid(cols["vwap"] if vwap is not None else (cols["high"] + cols["low"] + cols["close"]) / 3.0)
    g_session = grid((ws // (session_seconds * 1_000_000)).astype(np.float64))

    fields = np.array([_initial_fields(_annualization(seconds_per_bar.get(names[c]))) for c in by_count]).T.copy()
    closes = np.zeros((CLOSES, n_symbols))
    returns = np.zeros((RETURNS, n_symbols))
    for k in range(n_steps):
        m = int(active[k])
        out = np.full((len(INDICATOR_NAMES), m), NAN)
        _advance(
            fields[:, :m],
            closes[:, :m],
            returns[:, :m],
            k,
            g_close[k, :m],
            g_high[k, :m],
            g_low[k, :m],
            g_volume[k, :m],
            g_price[k, :m],
            g_session[k, :m],
            out,
        )
        result[row_at[k, :m]] = out.T
    return result


# --- the Indicator API: one class per indicator ------------------------------------------
STATE_MAX_BYTES = 65_536  # JSON of one user indicator's state for one symbol


class IndicatorError(RuntimeError):
    """An indicator broke the API's contract (raised in ``update``, a non-finite or missing
    value, a state too large or not JSON): a defect of the indicator, not of the bar, so
    the stage stops with this one line (and resumes from its last saved state)."""


class Indicator:
    """Base of every indicator: one instance per symbol and interval, fed that symbol's
    closed bars in window order (a redelivered or unusable bar never reaches it).

    Subclass it with a ``name`` (an identifier: the IndicatorSet's ``extra[name]`` and the
    feature name ``ticktape train --features`` takes), ``update`` (fold one Bar event
    dict: open, high, low, close, volume, vwap, window_start, ...), ``ready`` and
    ``value``.  ``__init__`` takes no arguments: a parameter is a class attribute (a
    subclass per setting, each with its own name).  Its state is ``to_dict``/``from_dict``
    (by default the attributes named in ``state_fields``): saved with the indicator
    stage's state, a JSON round trip of at most ``STATE_MAX_BYTES``; keep windows in
    fixed-size structures (e.g. a deque(maxlen=N) kept as a list).  ``update`` must be a
    pure function of the bars: no clock, no unseeded randomness, no I/O.
    """

    name: ClassVar[str] = ""
    outputs: ClassVar[tuple[str, ...]] = ()  # the values it writes; () = one, named ``name``
    state_fields: ClassVar[tuple[str, ...]] = ()

    def update(self, bar: Mapping[str, Any]) -> None:
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        """True once the lookback is filled (before that the value is null)."""
        raise NotImplementedError

    @property
    def value(self) -> float:
        raise NotImplementedError

    def values(self) -> dict[str, float | None]:
        """Every output by name, None while not ready (one output: ``value``)."""
        return {self.name: float(self.value) if self.ready else None}

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.state_fields}

    def from_dict(self, d: Mapping[str, Any]) -> None:
        for k in self.state_fields:
            setattr(self, k, d[k])

    @classmethod
    def output_names(cls) -> tuple[str, ...]:
        return cls.outputs or (cls.name,)


class TaLib(Indicator):
    """The built-in 20 on the base: ``IndicatorState``'s one fused TA-Lib-exact step per
    bar (their batch fast path stays ``compute_batch``)."""

    name = "talib"
    outputs = INDICATOR_NAMES

    def __init__(self, interval: str, session_seconds: int = 86400):
        self.state = IndicatorState(interval, session_seconds)
        self._values: dict[str, float | None] = dict.fromkeys(INDICATOR_NAMES)

    def update(self, bar: Mapping[str, Any]) -> None:
        values = self.state.update(bar)
        if values is not None:
            self._values = values

    def fold(self, bar: Mapping[str, Any]) -> bool:
        """``update``, telling whether the bar was new (False: redelivered, skipped)."""
        count = self.state.count
        self.update(bar)
        return self.state.count != count

    @property
    def ready(self) -> bool:
        return all(v is not None for v in self._values.values())

    def values(self) -> dict[str, float | None]:
        return self._values

    def to_dict(self) -> dict[str, Any]:
        return self.state.to_state()

    def from_dict(self, d: Mapping[str, Any]) -> None:
        self.state = IndicatorState.from_state(d)


@dataclass(frozen=True)
class IndicatorSpec:
    """A user indicator as configured (``INDICATORS``): its class, where it was imported
    from and the sha256 of its module's source (recorded with a model trained on it)."""

    cls: type[Indicator]
    path: str
    source_sha256: str

    def record(self) -> dict[str, Any]:
        return {"class": self.path, "outputs": list(self.cls.output_names()), "source_sha256": self.source_sha256}


def check_indicator_class(cls: type[Indicator], taken: Sequence[str] = ()) -> None:
    """IndicatorError unless ``cls`` can run: identifier outputs clashing with no built-in
    field (nor ``taken``), an instance built without arguments whose state is JSON."""
    names = cls.output_names()
    reserved = set(INDICATOR_NAMES) | set(taken) | {"event_id", "symbol", "interval", "ts", "close", "volume", "extra"}
    bad = [n for n in names if not (isinstance(n, str) and n.isidentifier())]
    if not cls.name or bad:
        raise IndicatorError(f"{cls.__qualname__}: name and outputs must be identifiers, got {cls.name!r} {bad}")
    clash = [n for n in names if n in reserved]
    if clash or len(set(names)) != len(names):
        raise IndicatorError(f"{cls.__qualname__}: output(s) {clash or names} repeat a built-in or another indicator")
    try:
        inst = cls()
    except Exception as e:
        raise IndicatorError(f"{cls.__qualname__}() failed: {type(e).__name__}: {e}") from None
    _checked_state(inst)


def _checked_state(inst: Indicator) -> dict[str, Any]:
    who = type(inst).__qualname__
    state = inst.to_dict()
    try:
        text = json.dumps(state)
        same = json.loads(text) == state
    except (TypeError, ValueError) as e:
        raise IndicatorError(f"indicator {who}: state is not JSON ({e}); keep numbers, strings, lists") from None
    if not same:
        raise IndicatorError(f"indicator {who}: state does not survive a JSON round trip (tuples? int keys?)")
    if len(text) > STATE_MAX_BYTES:
        raise IndicatorError(
            f"indicator {who}: state is {len(text)} bytes of JSON, over {STATE_MAX_BYTES}: keep bounded windows"
        )
    return state


def _fold_user(inst: Indicator, bar: Mapping[str, Any]) -> dict[str, float | None]:
    """Fold one bar into a user indicator; its outputs (floats or None), checked."""
    who = type(inst).__qualname__
    try:
        inst.update(bar)
        values = inst.values()
    except Exception as e:  # the indicator's defect, named (the bar passed the checks)
        raise IndicatorError(
            f"indicator {who} failed on {bar.get('symbol', '?')} at {bar['window_start']}: {type(e).__name__}: {e}"
        ) from None
    out: dict[str, float | None] = {}
    for name in inst.output_names():
        if name not in values:
            raise IndicatorError(f"indicator {who}: values() has no {name!r}")
        x = values[name]
        if x is not None and not (isinstance(x, (int, float)) and math.isfinite(x)):
            raise IndicatorError(f"indicator {who}: {name} = {x!r} is not a finite number or None")
        out[name] = None if x is None else float(x)
    return out


class SymbolIndicators:
    """All indicators of one symbol at one interval: the built-in 20 and the user ones."""

    __slots__ = ("talib", "user")

    def __init__(self, interval: str, user: Sequence[type[Indicator]] = (), session_seconds: int = 86400):
        self.talib = TaLib(interval, session_seconds)
        self.user = [cls() for cls in user]

    def update(self, bar: Mapping[str, Any]) -> tuple[dict[str, float | None], dict[str, float | None]] | None:
        """(the 20 values, the user outputs) of a bar, None for a redelivered one; BarError
        for unusable numbers (nothing folded), IndicatorError for a user indicator's defect."""
        if not self.talib.fold(bar):
            return None
        extra: dict[str, float | None] = {}
        for inst in self.user:
            extra.update(_fold_user(inst, bar))
        return self.talib.values(), extra

    def to_state(self) -> dict[str, Any]:
        """The built-in state (``IndicatorState.to_state``) plus ``user``: each user
        indicator's ``to_dict`` by name (checked: bounded JSON)."""
        return {**self.talib.to_dict(), "user": {type(u).name: _checked_state(u) for u in self.user}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], user: Sequence[type[Indicator]] = ()) -> SymbolIndicators:
        """Resume; a user indicator without a saved state (configured since) starts empty,
        a saved one no longer configured is dropped."""
        self = cls(state["interval"], (), state["session_seconds"])
        self.talib.from_dict(state)
        saved = state.get("user", {})
        for k in user:
            inst = k()
            if k.name in saved:
                inst.from_dict(saved[k.name])
            self.user.append(inst)
        return self


def user_values(bars: Sequence[Mapping[str, Any]], user: Sequence[type[Indicator]]) -> list[dict[str, float | None]]:
    """The user outputs of each bar (same order), one instance per (interval, symbol) fed
    its bars in order, as ``SymbolIndicators`` does; the bars are usable and not repeated
    (the batch path checks them)."""
    if not user:
        return [{} for _ in bars]
    states: dict[tuple[str, str], list[Indicator]] = {}
    out = []
    for bar in bars:
        insts = states.get((bar["interval"], bar["symbol"]))
        if insts is None:
            insts = states[(bar["interval"], bar["symbol"])] = [cls() for cls in user]
        extra: dict[str, float | None] = {}
        for inst in insts:
            extra.update(_fold_user(inst, bar))
        out.append(extra)
    return out

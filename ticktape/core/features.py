"""Model features and labels (SPEC §5), the same code in training and in the predict agent.

A feature vector belongs to one closed bar of one symbol and uses only what is known at
that bar's close: its IndicatorSet and the symbol's earlier IndicatorSets.  A small
per-symbol ``FeatureState`` keeps what the indicators do not carry (the last 21 closes,
20 volumes and 21 OBV values, in rings); ``update(indicator_set)`` is O(1) and returns
the vector aligned with ``FEATURE_NAMES``, NaN where a feature's lookback is not filled
yet.  Training folds history through the very same ``FeatureState``, so there is no
train/serve skew.  The state is a small JSON-able dict (``to_state``/``from_state``).

Definitions (``c`` = the bar's close; "rel" = relative to the close, so that one model
serves symbols at any price level):

``sma_N_rel``, ``ema_N_rel``  ``sma_N / c - 1`` (N = 10, 20, 50, 200), ``ema_N / c - 1`` (12, 26)
``rsi_5``, ``rsi_14``         as they are (0..100)
``macd*_rel``                 ``macd / c``, ``macd_signal / c``, ``macd_hist / c``
``bb_width``                  ``(bb_upper - bb_lower) / bb_middle``
``bb_pos``                    ``(c - bb_lower) / (bb_upper - bb_lower)`` (%B; 0.5 when the band is flat)
``atr_14_rel``                ``atr_14 / c``: the bar range.  IndicatorSet carries no high/low,
                              so the range enters as the ATR (Wilder average of the bars'
                              true ranges) relative to the close.
``volatility_20``             as it is (annualized)
``momentum_N_rel``            ``momentum_N / c`` (N = 5, 20)
``vwap_rel``                  ``vwap / c - 1``
``obv_flow_20``               ``(obv - obv 20 bars ago) / Σ volume of the last 20 bars``, in [-1, 1]
                              (0 when those bars traded nothing)
``ret_1``, ``ret_5``, ``ret_20``  lagged log returns ``ln(c / c k bars ago)``
``volume_z_20``               ``(volume - mean) / std`` over the last 20 bars' volumes, this
                              one included (population std; 0 when the volumes are equal)

User indicators (``INDICATORS``, ``ticktape.api.Indicator``) add one feature per output,
named as the output, its value as it is (``extra[name]`` of the IndicatorSet).

The longest lookback is ``sma_200_rel``'s: 200 bars.  A model may use a subset of the
features (``ticktape train --features``/``--exclude``), which shortens the lookback it needs.

Label: ``1`` when the close ``horizon`` bars later (the symbol's own bars) is above this
bar's close, else ``0`` — the sign of the log return over the next ``horizon`` bars,
using bars t+1..t+horizon only.  ``walk_forward_split`` holds out the latest rows and
purges every training row whose label window reaches into the holdout.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .indicators import INDICATOR_NAMES, BarError, Indicator, compute_batch, indicator_event, user_values
from .intervals import interval_seconds

# Bump when a definition changes: a model trained on other definitions is refused.
FEATURE_SET = "ticktape-features-1"
FEATURE_NAMES = (
    "sma_10_rel",
    "sma_20_rel",
    "sma_50_rel",
    "sma_200_rel",
    "ema_12_rel",
    "ema_26_rel",
    "rsi_5",
    "rsi_14",
    "macd_rel",
    "macd_signal_rel",
    "macd_hist_rel",
    "bb_width",
    "bb_pos",
    "atr_14_rel",
    "volatility_20",
    "momentum_5_rel",
    "momentum_20_rel",
    "vwap_rel",
    "obv_flow_20",
    "ret_1",
    "ret_5",
    "ret_20",
    "volume_z_20",
)
CLOSES = 21  # ret_20 needs the close 20 bars back
VOLUMES = 20
STATE_VERSION = 1
NAN = float("nan")
_LAGS = (1, 5, 20)
_REL = ("sma_10", "sma_20", "sma_50", "sma_200", "ema_12", "ema_26")
_PER_CLOSE = ("macd", "macd_signal", "macd_hist")


class FeatureError(ValueError):
    """An IndicatorSet whose close or volume cannot be used (the state is untouched)."""


def _num(x) -> float:
    return NAN if x is None else float(x)


class FeatureState:
    """Rolling inputs of one symbol at one interval (see the module doc)."""

    __slots__ = ("count", "last_ts", "_closes", "_volumes", "_obv")

    def __init__(self):
        self.count = 0  # IndicatorSets folded
        self.last_ts: int | None = None
        self._closes = [NAN] * CLOSES
        self._volumes = [NAN] * VOLUMES
        self._obv = [NAN] * CLOSES

    def update(self, ind: Mapping) -> list[float] | None:
        """Fold one IndicatorSet; its feature vector (NaN = missing), or None for a
        redelivered set (``ts`` not after the last one folded)."""
        ts = ind["ts"]
        if self.last_ts is not None and ts <= self.last_ts:
            return None
        c, v = ind["close"], ind["volume"]
        if not (isinstance(c, (int, float)) and 0.0 < c < math.inf):
            raise FeatureError(f"{ind.get('symbol', '?')} at {ts}: close must be a finite positive number, got {c!r}")
        if not (isinstance(v, (int, float)) and 0.0 <= v < math.inf):
            raise FeatureError(f"{ind.get('symbol', '?')} at {ts}: volume must be a finite number >= 0, got {v!r}")
        c, v = float(c), float(v)
        i = self.count
        closes, volumes, obvs = self._closes, self._volumes, self._obv
        closes[i % CLOSES] = c
        volumes[i % VOLUMES] = v
        obv = _num(ind["obv"])
        obvs[i % CLOSES] = obv
        self.count = i + 1
        self.last_ts = ts

        out = [(_num(ind[name]) / c - 1.0) for name in _REL]
        out.append(_num(ind["rsi_5"]))
        out.append(_num(ind["rsi_14"]))
        out.extend(_num(ind[name]) / c for name in _PER_CLOSE)
        upper, middle, lower = _num(ind["bb_upper"]), _num(ind["bb_middle"]), _num(ind["bb_lower"])
        width = upper - lower
        out.append(width / middle)
        out.append((c - lower) / width if width > 0.0 else (0.5 if width == 0.0 else NAN))
        out.append(_num(ind["atr_14"]) / c)
        out.append(_num(ind["volatility_20"]))
        out.append(_num(ind["momentum_5"]) / c)
        out.append(_num(ind["momentum_20"]) / c)
        out.append(_num(ind["vwap"]) / c - 1.0)
        if i >= VOLUMES:
            flow = obv - obvs[(i - VOLUMES) % CLOSES]  # signed volume of the last 20 bars
            traded = sum(volumes)
            out.append(flow / traded if traded > 0.0 else (0.0 if flow == flow else NAN))
        else:
            out.append(NAN)
        for k in _LAGS:
            out.append(math.log(c / closes[(i - k) % CLOSES]) if i >= k else NAN)
        if i >= VOLUMES - 1:
            mean = sum(volumes) / VOLUMES
            std = math.sqrt(sum((x - mean) ** 2 for x in volumes) / VOLUMES)
            # equal volumes leave rounding noise in std, not a spread to divide by
            out.append((v - mean) / std if std > 1e-9 * mean else 0.0)
        else:
            out.append(NAN)
        return out

    def to_state(self) -> dict:
        """A JSON-able dict (NaN as null); ``from_state`` of it continues bit for bit."""

        def enc(xs):
            return [None if x != x else x for x in xs]

        return {
            "version": STATE_VERSION,
            "count": self.count,
            "last_ts": self.last_ts,
            "closes": enc(self._closes),
            "volumes": enc(self._volumes),
            "obv": enc(self._obv),
        }

    @classmethod
    def from_state(cls, state: Mapping) -> FeatureState:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"feature state version {state.get('version')!r}, expected {STATE_VERSION}")
        self = cls()
        for key, size in (("closes", CLOSES), ("volumes", VOLUMES), ("obv", CLOSES)):
            if len(state[key]) != size:
                raise ValueError(f"feature state {key!r} has {len(state[key])} values, expected {size}")
        self.count = int(state["count"])
        self.last_ts = state["last_ts"]
        self._closes = [_num(x) for x in state["closes"]]
        self._volumes = [_num(x) for x in state["volumes"]]
        self._obv = [_num(x) for x in state["obv"]]
        return self


# --- training data ---------------------------------------------------------------------
@dataclass(frozen=True)
class Bars:
    """Bars as columns, any order (window_start in µs; vwap None: the typical price)."""

    symbol: Sequence[str]
    window_start: Sequence[int]
    open: Sequence[float]
    high: Sequence[float]
    low: Sequence[float]
    close: Sequence[float]
    volume: Sequence[float]
    vwap: Sequence[float] | None = None

    def __len__(self) -> int:
        return len(self.symbol)

    @classmethod
    def from_events(cls, bars: Sequence[Mapping]) -> Bars:
        """From Bar event dicts (schemas/bar.v1.avsc)."""
        return cls(
            *(
                [b[k] for b in bars]
                for k in ("symbol", "window_start", "open", "high", "low", "close", "volume", "vwap")
            )
        )


@dataclass(frozen=True)
class Dataset:
    """One row per bar, ordered by (ts, symbol): features, label and when the label is known."""

    interval: str
    horizon: int
    symbols: list[str]  # per row
    ts: np.ndarray  # int64, the bar's window end (µs)
    X: np.ndarray  # (rows, len(FEATURE_NAMES)) float64, NaN = missing
    y: np.ndarray  # float64: 1.0 up, 0.0 not up, NaN = no bar `horizon` later yet
    label_end: np.ndarray  # int64: ts of the bar `horizon` later (-1 without a label)
    fingerprint: str  # sha256 of the bars it was built from (order-independent)
    names: tuple[str, ...] = FEATURE_NAMES  # X's columns: FEATURE_NAMES, then user indicator outputs


def fingerprint(bars: Bars) -> str:
    """sha256 of the bars sorted by (symbol, window_start): same bars, same fingerprint."""
    order = sorted(range(len(bars)), key=lambda r: (bars.symbol[r], bars.window_start[r]))
    h = hashlib.sha256()
    cols = [np.asarray(getattr(bars, k), dtype=np.float64)[order] for k in ("open", "high", "low", "close", "volume")]
    if bars.vwap is not None:
        cols.append(np.asarray(bars.vwap, dtype=np.float64)[order])
    h.update("\n".join(bars.symbol[r] for r in order).encode())
    h.update(np.asarray(bars.window_start, dtype=np.int64)[order].tobytes())
    for col in cols:
        h.update(col.tobytes())
    return h.hexdigest()


def direction_labels(closes: Sequence[float], ts: Sequence[int], horizon: int) -> tuple[list[float], list[int]]:
    """Per-bar label of one symbol's bars in time order, and the ts its label is known at."""
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 bar, got {horizon}")
    n = len(closes)
    labels, ends = [NAN] * n, [-1] * n
    for t in range(n - horizon):
        labels[t] = 1.0 if closes[t + horizon] > closes[t] else 0.0
        ends[t] = ts[t + horizon]
    return labels, ends


def build_dataset(
    bars: Bars, interval: str, horizon: int, session_seconds: int = 86400, indicators: Sequence[type[Indicator]] = ()
) -> Dataset:
    """Indicators (the engine's batch path; user ``indicators`` bar by bar, as the stage
    folds them), features (``FeatureState``, then each user output as it is) and labels
    of every bar.

    Each symbol's window starts must be distinct (``BarError`` from the engine otherwise,
    naming the row in the input order)."""
    width = interval_seconds(interval) * 1_000_000
    n = len(bars)
    starts = np.asarray(bars.window_start, dtype=np.int64)
    order = sorted(range(n), key=lambda r: (bars.symbol[r], starts[r]))  # per symbol, in time

    def pick(col):
        return [col[r] for r in order]

    symbols = pick(bars.symbol)
    cols = {k: pick(getattr(bars, k)) for k in ("open", "high", "low", "close", "volume")}
    vwap = pick(bars.vwap) if bars.vwap is not None else None
    sorted_starts = starts[order] if n else starts
    try:
        values = compute_batch(
            symbols,
            sorted_starts,
            cols["open"],
            cols["high"],
            cols["low"],
            cols["close"],
            cols["volume"],
            dict.fromkeys(symbols, width / 1e6),
            vwap=vwap,
            session_seconds=session_seconds,
        )
    except BarError as e:  # the engine's row is one of the sorted rows: name it in input order
        if e.row is not None:
            e.row = order[e.row]
        raise

    extra_names = tuple(name for cls in indicators for name in cls.output_names())
    X = np.full((n, len(FEATURE_NAMES) + len(extra_names)), NAN)
    y = np.full(n, NAN)
    label_end = np.full(n, -1, dtype=np.int64)
    ts = sorted_starts + width
    start = 0
    while start < n:
        end = start
        while end < n and symbols[end] == symbols[start]:
            end += 1
        state = FeatureState()
        events = [
            {
                "symbol": symbols[r],
                "interval": interval,
                "window_start": int(sorted_starts[r]),
                "window_end": int(ts[r]),
                **{k: cols[k][r] for k in cols},
                "vwap": None if vwap is None else vwap[r],
            }
            for r in range(start, end)
        ]
        extras = user_values(events, indicators)
        for r, bar, extra in zip(range(start, end), events, extras):
            row = values[r].tolist()
            X[r, : len(FEATURE_NAMES)] = state.update(
                indicator_event(bar, {k: (None if x != x else x) for k, x in zip(INDICATOR_NAMES, row)})
            )
            X[r, len(FEATURE_NAMES) :] = [_num(extra[k]) for k in extra_names]
        labels, ends = direction_labels(cols["close"][start:end], ts[start:end].tolist(), horizon)
        y[start:end] = labels
        label_end[start:end] = ends
        start = end

    by_time = np.lexsort((np.arange(n), ts))  # (ts, symbol): rows were grouped by symbol
    return Dataset(
        interval,
        horizon,
        [symbols[r] for r in by_time],
        ts[by_time],
        X[by_time],
        y[by_time],
        label_end[by_time],
        fingerprint(bars),
        FEATURE_NAMES + extra_names,
    )


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indexes, time order
    holdout: np.ndarray
    purged: int  # usable rows dropped because their label window reaches into the holdout
    holdout_start: int  # ts of the first holdout row


def walk_forward_split(ts: np.ndarray, label_end: np.ndarray, usable: np.ndarray, holdout_fraction: float) -> Split:
    """Hold out the latest ``holdout_fraction`` of the usable rows (by time, no shuffling).

    The holdout starts at the first row time T of its share; a training row is kept only
    when its label is known by T (``label_end <= T``), so no training label looks at a
    bar after T; the rows in between are purged."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout fraction must be between 0 and 1, got {holdout_fraction}")
    rows = np.flatnonzero(usable)
    rows = rows[np.argsort(ts[rows], kind="stable")]
    if len(rows) < 2:
        raise ValueError(f"{len(rows)} usable rows: too few to split")
    cut = min(len(rows) - 1, max(1, int(len(rows) * (1.0 - holdout_fraction))))
    t0 = int(ts[rows[cut]])
    before = rows[ts[rows] < t0]
    train = before[label_end[before] <= t0]
    return Split(train, rows[ts[rows] >= t0], len(before) - len(train), t0)

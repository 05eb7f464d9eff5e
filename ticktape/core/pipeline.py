"""The in-process pipeline of a backtest: ticks → bars → indicator sets → features →
predictions (→ the trading chain), the same core the agents run, without a broker.

Staged, not interleaved: each stage is a deterministic function of its input stream
(per partition for bars, per symbol and interval for indicators and features, per row
for the model), with no feedback from later stages, so running stage after stage over
the whole period gives exactly the events the agents give event by event — and lets
the indicators run through the engine's vectorized batch path (bit-identical to the
per-symbol state the agent keeps) and the model score all rows in one call.

Bars need Kafka's partitioning: a partition's watermark closes the windows of every
symbol in it.  Ticks are given per partition, in partition order (a replayed topic
gives them so; a file or table is split with ``core.replay.partition_for``, as the
replay into a backtest's topics does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .bars import BarAggregator
from .features import FEATURE_NAMES, VOLUMES, FeatureState
from .indicators import INDICATOR_NAMES, Indicator, compute_batch, user_values
from .intervals import interval_seconds


@dataclass
class Outputs:
    """Events of a run per catalog topic, each list in its producing order."""

    bars: dict[str, list[dict]] = field(default_factory=dict)  # interval -> bars
    indicators: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)
    late_ticks: int = 0
    invalid_ticks: int = 0
    skipped_predictions: int = 0  # rows with a missing feature (lookback not filled)


def aggregate(
    ticks_by_partition: Mapping[int, Sequence[dict]], intervals: Sequence[str], grace_us: int, chunk: int = 5000
) -> tuple[dict[int, list[dict]], int, int]:
    """(bars per partition in emission order, late ticks, invalid ticks)."""
    out: dict[int, list[dict]] = {}
    late = invalid = 0
    for p in sorted(ticks_by_partition):
        ticks = ticks_by_partition[p]
        agg = BarAggregator(intervals, grace_us)
        bars: list[dict] = []
        for i in range(0, len(ticks), chunk):  # the result does not depend on the cut
            batch = agg.process(ticks[i : i + chunk])
            bars.extend(batch.bars)
            late += len(batch.late)
            invalid += len(batch.invalid)
        out[p] = bars
    return out, late, invalid


def indicator_sets(
    bars: Sequence[dict], session_seconds: int = 86400, indicators: Sequence[type[Indicator]] = ()
) -> list[dict]:
    """The IndicatorSet of each bar (same order), as ``indicator_event`` builds it, with the
    user ``indicators``' outputs in ``extra``; the bars of a symbol and interval must come
    in window order (they do from the aggregator)."""
    if not bars:
        return []
    keys = [f"{b['interval']}\0{b['symbol']}" for b in bars]
    spb = {f"{b['interval']}\0{b['symbol']}": interval_seconds(b["interval"]) for b in bars}
    values = compute_batch(
        keys,
        [b["window_start"] for b in bars],
        [b["open"] for b in bars],
        [b["high"] for b in bars],
        [b["low"] for b in bars],
        [b["close"] for b in bars],
        [b["volume"] for b in bars],
        spb,
        vwap=[b["vwap"] for b in bars],
        session_seconds=session_seconds,
    ).tolist()
    out = []
    names = INDICATOR_NAMES
    for b, row, extra in zip(bars, values, user_values(bars, indicators)):
        ev = {
            "event_id": f"{b['symbol']}:{b['interval']}:{b['window_start']}",
            "symbol": b["symbol"],
            "interval": b["interval"],
            "ts": b["window_end"],
            "close": float(b["close"]),
            "volume": float(b["volume"]),
        }
        for name, x in zip(names, row):
            ev[name] = None if x != x else x
        ev["extra"] = extra
        out.append(ev)
    return out


def predictions(indicators: Sequence[dict], model) -> tuple[list[dict], int]:
    """The predict agent's predictions: the sets of the model's interval fold into their
    symbol's features (``feature_rows``: ``FeatureState`` over a whole column at once) and
    are scored in one call.  Sets of other intervals only feed states nothing reads here.
    (predictions, skipped)."""
    if model is None:
        return [], 0
    sets = [ind for ind in indicators if ind["interval"] == model.interval]
    if not sets:
        return [], 0
    preds, skipped, _ = model.predictions(list(zip(sets, feature_rows(sets))))
    return preds, skipped


_REL = ("sma_10", "sma_20", "sma_50", "sma_200", "ema_12", "ema_26")
_PER_CLOSE = ("macd", "macd_signal", "macd_hist")


def feature_rows(sets: Sequence[dict]) -> np.ndarray:
    """The feature vector ``FeatureState.update`` gives each set (rows in input order),
    bit for bit, computed column-wise per symbol.  Each symbol's sets of one interval come
    in ``ts`` order, as from the indicator stage.  Sums run in the ring's slot order and
    logs and squares go through Python's ``math``, as in ``FeatureState``; anything a
    vector path could round differently is done the same way.  Sets whose close or volume
    ``FeatureState`` would refuse go through it row by row (it raises as the agent does)."""
    n = len(sets)
    out = np.empty((n, len(FEATURE_NAMES)))
    col = {
        name: np.array([ind[name] for ind in sets], dtype=float)
        for name in (
            "close",
            "volume",
            "obv",
            "rsi_5",
            "rsi_14",
            "bb_upper",
            "bb_middle",
            "bb_lower",
            "atr_14",
            "volatility_20",
            "momentum_5",
            "momentum_20",
            "vwap",
        )
        + _REL
        + _PER_CLOSE
    }
    c, v = col["close"], col["volume"]
    if not (np.all((c > 0.0) & (c < np.inf)) and np.all((v >= 0.0) & (v < np.inf))):
        states: dict[tuple[str, str], FeatureState] = {}
        for i, ind in enumerate(sets):
            out[i] = states.setdefault((ind["interval"], ind["symbol"]), FeatureState()).update(ind)
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        k = 0
        for name in _REL:
            out[:, k] = col[name] / c - 1.0
            k += 1
        out[:, 6], out[:, 7] = col["rsi_5"], col["rsi_14"]
        for j, name in enumerate(_PER_CLOSE):
            out[:, 8 + j] = col[name] / c
        upper, middle, lower = col["bb_upper"], col["bb_middle"], col["bb_lower"]
        width = upper - lower
        out[:, 11] = width / middle
        out[:, 12] = np.where(width > 0.0, (c - lower) / width, np.where(width == 0.0, 0.5, np.nan))
        out[:, 13] = col["atr_14"] / c
        out[:, 14] = col["volatility_20"]
        out[:, 15] = col["momentum_5"] / c
        out[:, 16] = col["momentum_20"] / c
        out[:, 17] = col["vwap"] / c - 1.0
        out[:, 18:] = np.nan  # the lookback columns, filled per symbol below
        groups: dict[str, list[int]] = {}
        for i, ind in enumerate(sets):
            groups.setdefault(ind["symbol"], []).append(i)
        log = math.log
        for rows in groups.values():
            _lookback_columns(out, np.array(rows), c, v, col["obv"], log)
    return out


def _lookback_columns(out, rows, c, v, obv, log) -> None:
    """obv_flow_20, ret_1/5/20 and volume_z_20 of one symbol's rows (see ``feature_rows``)."""
    m = len(rows)
    cs, vs, os_ = c[rows], v[rows], obv[rows]
    for j, lag in ((19, 1), (20, 5), (21, 20)):  # ret_1, ret_5, ret_20: ln(c / c lag bars ago)
        if m > lag:
            out[rows[lag:], j] = list(map(log, (cs[lag:] / cs[:-lag]).tolist()))
    if m < VOLUMES:
        return
    # the ring of the last 20 volumes, summed in slot order (slot = bar count % 20)
    t = np.arange(VOLUMES - 1, m)
    slots = [t - (t - s) % VOLUMES for s in range(VOLUMES)]  # the row each slot holds at row t
    traded = 0.0 + vs[slots[0]]
    for s in range(1, VOLUMES):
        traded = traded + vs[slots[s]]
    mean = traded / VOLUMES
    dev = [(vs[slots[s]] - mean).tolist() for s in range(VOLUMES)]
    sq = [sum(d[r] ** 2 for d in dev) for r in range(len(t))]  # Python's ** as FeatureState
    std = np.sqrt(np.array(sq) / VOLUMES)
    out[rows[t], 22] = np.where(std > 1e-9 * mean, (vs[t] - mean) / std, 0.0)
    if m > VOLUMES:  # obv_flow_20 from the 21st bar: obv now minus obv 20 bars ago, over the volume
        flow = os_[VOLUMES:] - os_[:-VOLUMES]
        tr = traded[1:]
        out[rows[VOLUMES:], 18] = np.where(tr > 0.0, flow / tr, np.where(flow == flow, 0.0, np.nan))


def run(
    ticks_by_partition: Mapping[int, Sequence[dict]],
    intervals: Sequence[str],
    grace_us: int,
    model=None,
    indicators: Sequence[type[Indicator]] = (),
) -> Outputs:
    """Market data to predictions for one period (see the module doc)."""
    per_partition, late, invalid = aggregate(ticks_by_partition, intervals, grace_us)
    # each symbol lives in one partition: its bars keep their order across this concatenation
    out = from_bars([b for p in sorted(per_partition) for b in per_partition[p]], intervals, model, indicators)
    out.late_ticks, out.invalid_ticks = late, invalid
    return out


def from_bars(
    bars: Sequence[dict], intervals: Sequence[str], model=None, indicators: Sequence[type[Indicator]] = ()
) -> Outputs:
    """Bars to predictions: each symbol's bars of an interval in window order (as the
    aggregator emits them, or as a bar-only source publishes them); ``indicators``: the
    user indicators (``INDICATORS``)."""
    out = Outputs()
    for iv in intervals:
        out.bars[iv] = [b for b in bars if b["interval"] == iv]
    out.indicators = indicator_sets(bars, indicators=indicators)
    out.predictions, out.skipped_predictions = predictions(out.indicators, model)
    return out

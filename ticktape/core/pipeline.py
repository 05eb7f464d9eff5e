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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .bars import BarAggregator
from .features import FeatureState
from .indicators import INDICATOR_NAMES, compute_batch
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


def aggregate(ticks_by_partition: Mapping[int, Sequence[dict]], intervals: Sequence[str],
              grace_us: int, chunk: int = 5000) -> tuple[dict[int, list[dict]], int, int]:
    """(bars per partition in emission order, late ticks, invalid ticks)."""
    out: dict[int, list[dict]] = {}
    late = invalid = 0
    for p in sorted(ticks_by_partition):
        ticks = ticks_by_partition[p]
        agg = BarAggregator(intervals, grace_us)
        bars: list[dict] = []
        for i in range(0, len(ticks), chunk):  # the result does not depend on the cut
            batch = agg.process(ticks[i:i + chunk])
            bars.extend(batch.bars)
            late += len(batch.late)
            invalid += len(batch.invalid)
        out[p] = bars
    return out, late, invalid


def indicator_sets(bars: Sequence[dict], session_seconds: int = 86400) -> list[dict]:
    """The IndicatorSet of each bar (same order), as ``indicator_event`` builds it; the bars
    of a symbol and interval must come in window order (they do from the aggregator)."""
    if not bars:
        return []
    keys = [f"{b['interval']}\0{b['symbol']}" for b in bars]
    spb = {f"{b['interval']}\0{b['symbol']}": interval_seconds(b["interval"]) for b in bars}
    values = compute_batch(keys, [b["window_start"] for b in bars], [b["open"] for b in bars],
                           [b["high"] for b in bars], [b["low"] for b in bars],
                           [b["close"] for b in bars], [b["volume"] for b in bars], spb,
                           vwap=[b["vwap"] for b in bars], session_seconds=session_seconds).tolist()
    out = []
    names = INDICATOR_NAMES
    for b, row in zip(bars, values):
        ev = {"event_id": f"{b['symbol']}:{b['interval']}:{b['window_start']}", "symbol": b["symbol"],
              "interval": b["interval"], "ts": b["window_end"], "close": float(b["close"]),
              "volume": float(b["volume"])}
        for name, x in zip(names, row):
            ev[name] = None if x != x else x
        out.append(ev)
    return out


def predictions(indicators: Sequence[dict], model) -> tuple[list[dict], int]:
    """Every set folds into its (interval, symbol) FeatureState, as the predict agent does;
    the sets of the model's interval are scored in one call.  (predictions, skipped)."""
    states: dict[tuple[str, str], FeatureState] = {}
    items = []
    for ind in indicators:
        key = (ind["interval"], ind["symbol"])
        st = states.get(key)
        if st is None:
            st = states[key] = FeatureState()
        vec = st.update(ind)
        if vec is not None and model is not None and ind["interval"] == model.interval:
            items.append((ind, vec))
    if model is None or not items:
        return [], 0
    preds, skipped, _ = model.predictions(items)
    return preds, skipped


def run(ticks_by_partition: Mapping[int, Sequence[dict]], intervals: Sequence[str], grace_us: int,
        model=None) -> Outputs:
    """Market data to predictions for one period (see the module doc)."""
    per_partition, late, invalid = aggregate(ticks_by_partition, intervals, grace_us)
    out = Outputs(late_ticks=late, invalid_ticks=invalid)
    # each symbol lives in one partition: its bars keep their order across this concatenation
    bars = [b for p in sorted(per_partition) for b in per_partition[p]]
    for iv in intervals:
        out.bars[iv] = [b for b in bars if b["interval"] == iv]
    out.indicators = indicator_sets(bars)
    out.predictions, out.skipped_predictions = predictions(out.indicators, model)
    return out

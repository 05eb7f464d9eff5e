"""A backtest without I/O: the whole flow over one period's ticks, and what a run stores.

``run`` takes the ticks of a period per partition (in partition order) and gives every
event the live pipeline would give for them: bars, indicator sets and predictions from
``core.pipeline``, then signals, orders, rejections, fills, positions and equity from
the trading desks (``core.desks``), the very objects the Faust agents drive.  The desks'
outputs do not depend on how their inputs interleave, so the trading chain is fed one
time-ordered stream (market data and the strategy interval's analytics merged by
``ts``), which keeps its buffers small.

The end of a period: a window closes only when its partition's watermark passes its end
plus the grace, and the watermark moves only with data.  So every run ends each
partition with a quote-only *flush tick* (``flush_ticks``) beyond ``--to`` — the same
ticks in both modes — and every window holding a tick of the period closes.

``summarize`` turns the events into what ``backtest_*`` tables hold: the equity curve
(the last Equity of each strategy interval, after a first point at the starting cash),
the trades (the fills, by time), the performance figures (``core.performance``) and
counts; ``results_sha256`` fingerprints curve and trades, so two runs, or the two
modes, are compared by one hash.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from . import pipeline
from .bars import is_heartbeat
from .desks import TradingChain
from .execution import ExecConfig
from .indicators import IndicatorSpec
from .intervals import interval_seconds
from .performance import resample_last, summarize as figures
from .risk import RiskLimits
from .strategies import StrategySpec
from .strategy import StrategyConfig

FLUSH_SYMBOL = "_flush"  # the flush ticks' symbol: no real symbol, quote-only (forms no bar)
EQUITY_FIELDS = ("cash", "market_value", "equity", "gross_exposure", "realized_pnl", "unrealized_pnl")
TRADE_FIELDS = ("event_id", "order_id", "ts", "symbol", "side", "quantity", "price", "commission", "slippage_bps")
# chain output kind -> event type (schemas/<type>.v1.avsc), of those with a topic of their own
TRADING_KINDS = {
    "signal": "signal",
    "order": "order",
    "rejection": "order_rejected",
    "fill": "fill",
    "position": "position",
    "equity": "equity",
    "risk_state": "risk_state",
}


@dataclass(frozen=True)
class Setup:
    """Everything a run's events depend on besides its ticks and its model."""

    intervals: tuple[str, ...]
    grace_us: int
    strategy: StrategyConfig
    execution: ExecConfig
    limits: RiskLimits
    limits_doc: dict  # the risk file as parsed (stored with the run)
    starting_cash: float
    universe: tuple[str, ...]  # the symbols the risk desk waits for (SYMBOLS)
    market_data: str = "ticks"  # what paper execution fills against: ticks or bars
    idle_us: int = 0  # RISK_IDLE_MS: how far a symbol may fall behind before it holds nothing back
    max_pending: int = 100_000  # RISK_MAX_PENDING
    strategy_spec: StrategySpec | None = None  # STRATEGY (None: the built-in with ``strategy``'s parameters)
    indicators: tuple[IndicatorSpec, ...] = ()  # INDICATORS: the user indicators

    @property
    def width_us(self) -> int:
        return interval_seconds(self.strategy.interval) * 1_000_000

    def parameters(self) -> dict:
        """JSON-able parameters of the run (``backtest_runs.parameters``)."""
        st, ex = self.strategy, self.execution
        return {
            "intervals": list(self.intervals),
            "grace_us": self.grace_us,
            "strategy": {k: getattr(st, k) for k in st.__dataclass_fields__},
            "execution": {k: getattr(ex, k) for k in ex.__dataclass_fields__},
            "market_data": self.market_data,
            "starting_cash": self.starting_cash,
            "universe": list(self.universe),
            "risk_limits": self.limits_doc,
            "risk_idle_us": self.idle_us,
            "risk_max_pending": self.max_pending,
            "market_hours": hours.name if (hours := self.limits.defaults.market_hours) else "off",
            **({"indicators": [spec.record() for spec in self.indicators]} if self.indicators else {}),
        }


def flush_ticks(end_us: int, setup: Setup, partitions: int) -> list[dict]:
    """One quote-only tick per partition late enough to close every window holding a tick
    at or before ``end_us``: the last such window ends by ``end + width``."""
    width = max(interval_seconds(iv) for iv in setup.intervals) * 1_000_000
    ts = end_us + width + setup.grace_us
    return [
        {
            "event_id": f"flush:{p}",
            "symbol": FLUSH_SYMBOL,
            "ts": ts,
            "price": None,
            "size": None,
            "bid": 1.0,
            "ask": 1.0,
            "bid_size": None,
            "ask_size": None,
            "source": "backtest",
            "seq": p,
        }
        for p in range(partitions)
    ]


@dataclass
class Events:
    """Every event of a run by event type, each list in its producing order."""

    by_type: dict[str, list[dict]] = field(default_factory=dict)
    late_ticks: int = 0
    invalid_ticks: int = 0
    skipped_predictions: int = 0
    # kafka mode: account-stream events the risk desk took late, and released without
    # waiting (a full buffer): bounded waiting decided on the worker's pace, which the
    # in-process run never does, so the two can differ
    risk_late: int = 0
    risk_forced: int = 0

    def __getitem__(self, event_type: str) -> list[dict]:
        return self.by_type.get(event_type, [])


def _market_stream(ticks_by_partition: Mapping[int, Sequence[dict]], bars: Sequence[dict], setup: Setup):
    """What paper execution reads, each source in its own order: a partition's ticks, or
    the strategy interval's bars."""
    if setup.market_data == "ticks":
        return [(("tick", t) for t in ticks_by_partition[p] if not is_heartbeat(t)) for p in sorted(ticks_by_partition)]
    return [(("bar", b) for b in bars)]


def analytics(ticks_by_partition: Mapping[int, Sequence[dict]], setup: Setup, model=None) -> pipeline.Outputs:
    """Bars, indicator sets and predictions: they do not depend on the trading parameters."""
    return pipeline.run(
        ticks_by_partition, setup.intervals, setup.grace_us, model, [spec.cls for spec in setup.indicators]
    )


def trading(ticks_by_partition: Mapping[int, Sequence[dict]], out: pipeline.Outputs, setup: Setup) -> Events:
    """The trading desks over the market data and analytics; every event of the run."""
    iv = setup.strategy.interval
    chain = TradingChain(
        setup.strategy,
        setup.limits,
        setup.execution,
        setup.starting_cash,
        setup.universe,
        setup.width_us,
        setup.market_data,
        setup.idle_us,
        setup.max_pending,
        setup.strategy_spec,
    )
    kind = chain.strategy.input  # what the strategy trades on: predictions or indicator sets
    feed_in = sorted(
        ((kind, e) for e in (out.predictions if kind == "prediction" else out.indicators) if e["interval"] == iv),
        key=lambda x: x[1]["ts"],
    )
    streams = _market_stream(ticks_by_partition, sorted(out.bars.get(iv, []), key=itemgetter("ts")), setup)
    feed = chain.feed
    for event_type, ev in heapq.merge(*streams, feed_in, key=lambda x: x[1]["ts"]):
        feed(event_type, ev)
    events = Events(
        late_ticks=out.late_ticks, invalid_ticks=out.invalid_ticks, skipped_predictions=out.skipped_predictions
    )
    events.by_type["bar"] = [b for i in setup.intervals for b in out.bars.get(i, [])]
    events.by_type["indicator_set"] = out.indicators
    events.by_type["prediction"] = out.predictions
    for kind, event_type in TRADING_KINDS.items():
        events.by_type[event_type] = chain.outputs[kind]
    return events


def run(ticks_by_partition: Mapping[int, Sequence[dict]], setup: Setup, model=None) -> Events:
    """All events of a period (the flush ticks included in ``ticks_by_partition``)."""
    return trading(ticks_by_partition, analytics(ticks_by_partition, setup, model), setup)


def run_bars(bars: Sequence[dict], setup: Setup, model=None) -> Events:
    """All events of a period of closed bars (a bar-only source: paper execution fills
    at the next bar's open, ``market_data="bars"``)."""
    if setup.market_data != "bars":
        raise ValueError("a backtest over bars fills against bars: market_data must be 'bars'")
    return trading({}, pipeline.from_bars(bars, setup.intervals, model, [spec.cls for spec in setup.indicators]), setup)


# --- what a run stores --------------------------------------------------------------


@dataclass
class Result:
    equity: list[dict]  # backtest_equity rows: ts + EQUITY_FIELDS + drawdown
    trades: list[dict]  # backtest_trades rows: TRADE_FIELDS
    metrics: dict
    counts: dict
    sha256: str  # of curve and trades (``results_sha256``)


def equity_curve(equity_events: Iterable[dict], start_us: int, starting_cash: float, period_us: int) -> list[dict]:
    """The last Equity of each period, after a first point (the period holding
    ``start_us``, at the starting cash), each with its drawdown from the running peak."""
    first = {
        "ts": start_us - start_us % period_us,
        "cash": starting_cash,
        "market_value": 0.0,
        "equity": starting_cash,
        "gross_exposure": 0.0,
        "realized_pnl": 0.0,
        "unrealized_pnl": 0.0,
    }
    rows = [first]
    for end, ev in resample_last(((e["ts"], e) for e in equity_events), period_us):
        if end <= first["ts"]:
            continue  # not after the first point (an equity before the period: none in practice)
        rows.append({"ts": end} | {k: ev[k] for k in EQUITY_FIELDS})
    peak = -math.inf
    for r in rows:
        peak = max(peak, r["equity"])
        r["drawdown"] = 1.0 - r["equity"] / peak if peak > 0 else 0.0
    return rows


def trades(fills: Iterable[dict]) -> list[dict]:
    """The fills as trades, by (ts, symbol, event id): the same order whatever the mode."""
    return [{k: f[k] for k in TRADE_FIELDS} for f in sorted(fills, key=itemgetter("ts", "symbol", "event_id"))]


def counts(events: Events) -> dict:
    by_reason = Counter(r["reason_code"] for r in events["order_rejected"])
    return {
        "bars": dict(sorted(Counter(b["interval"] for b in events["bar"]).items())),
        "indicator_sets": len(events["indicator_set"]),
        "predictions": len(events["prediction"]),
        "skipped_predictions": events.skipped_predictions,
        "late_ticks": events.late_ticks,
        "invalid_ticks": events.invalid_ticks,
        "signals": len(events["signal"]),
        "orders": len(events["order"]),
        "rejections": dict(sorted(by_reason.items())),
        "fills": len(events["fill"]),
        "equity_events": len(events["equity"]),
    }


def canonical(obj) -> bytes:
    """Deterministic JSON bytes (floats as repr: exact round trip)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def summarize(events: Events, setup: Setup, start_us: int) -> Result:
    curve = equity_curve(events["equity"], start_us, setup.starting_cash, setup.width_us)
    rows = trades(events["fill"])
    stats = figures([(r["ts"], r["equity"]) for r in curve], rows, setup.width_us)
    c = counts(events)
    stats["orders"] = c["orders"]
    stats["rejections"] = sum(c["rejections"].values())
    digest = hashlib.sha256(canonical({"equity": curve, "trades": rows})).hexdigest()
    return Result(curve, rows, stats, c, digest)


TICK_FIELDS = ("event_id", "symbol", "ts", "price", "size", "bid", "ask", "bid_size", "ask_size", "source", "seq")
BAR_FIELDS = (
    "event_id",
    "symbol",
    "interval",
    "ts",
    "window_start",
    "window_end",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trade_count",
)


def data_fingerprint(events_by_partition: Mapping[int, Sequence[dict]], names: Sequence[str] = TICK_FIELDS) -> str:
    """sha256 of the input: every event's fields (repr: exact), partition by partition in order."""
    h = hashlib.sha256()
    for p in sorted(events_by_partition):
        h.update(f"partition {p}\n".encode())
        h.update("\n".join(repr(tuple(map(e.get, names))) for e in events_by_partition[p]).encode())
    return h.hexdigest()

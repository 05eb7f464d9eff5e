"""Throughput of the indicator engine: symbol-bars per second through all 20 indicators.

Pure core on one core, no I/O: seeded random-walk bars for S symbols × T bars, through
``compute_batch`` (numpy, one vectorized step per bar index across symbols) and through
``IndicatorState.update`` (one symbol at a time, as a stream processor calls it).

End to end on the real broker, as bench/bench_ticks.py does for bars: per run, a fresh
namespace's md.bars.1m is preloaded with such bars as Bar events (keyed by symbol) and an
indicators-only worker (WORKER_STAGES=indicators) decodes, folds, sends the IndicatorSets
and writes its changelog; its rate is read from its own bars-in counter, from the first
poll that sees bars to the one that sees all (start-up excluded), and every bar must come
out as exactly one IndicatorSet.

After one warm-up run, each case runs ``--runs`` times; the table shows the median and
the spread (min-max) of the rates, and the JSON goes to bench/results/indicators.json.

    python -m bench.bench_indicators            # full run
    python -m bench.bench_indicators --quick    # smoke run
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import talib

from bench.harness import Figure, bench_main, repeat, services, timed_rate
from bench.processes import T0, Process, drop, namespace, preload, time_count
from ticktape.core.indicators import IndicatorState, compute_batch
from ticktape.serde import Serde
from ticktape.stack import free_port

TARGET = 200_000  # symbol-bars/s, batch path
MINUTE = 60_000_000
STAGE = "indicators"


def make_bars(symbols: int, bars: int, seed: int = 42) -> dict:
    """1m bars from T0, interleaved by time (row = bar index × symbols + symbol), as a CSV
    would hold them: each opens at its previous close, high and low lie beyond both, the
    vwap within the bar's typical range."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, (bars, symbols)), axis=0))
    spread = close * rng.uniform(0.0, 0.002, (bars, symbols))
    volume = rng.uniform(1.0, 1000.0, (bars, symbols))
    trade_count = rng.integers(1, 500, (bars, symbols))
    open_ = np.vstack([np.full((1, symbols), 100.0), close[:-1]])
    high, low = np.maximum(open_, close) + spread, np.minimum(open_, close) - spread
    return {
        "n_symbols": symbols,
        "symbols": [f"SYM{j:04d}" for j in range(symbols)] * bars,
        "window_start": T0 + np.repeat(np.arange(bars, dtype=np.int64) * MINUTE, symbols),
        "open": open_.ravel(),
        "high": high.ravel(),
        "low": low.ravel(),
        "close": close.ravel(),
        "volume": volume.ravel(),
        "vwap": ((high + low + close) / 3.0).ravel(),
        "trade_count": trade_count.ravel(),
    }


def run_batch(data: dict) -> int:
    values = compute_batch(
        data["symbols"],
        data["window_start"],
        data["open"],
        data["high"],
        data["low"],
        data["close"],
        data["volume"],
        dict.fromkeys(data["symbols"], 60),
        vwap=data["vwap"],
    )
    return len(values)


def bar_dicts(data: dict, symbols: int) -> list[dict]:
    """The first ``symbols`` symbols as Bar events (schemas/bar.v1.avsc), in time order."""
    out = []
    for i, symbol in enumerate(data["symbols"]):
        if i % data["n_symbols"] >= symbols:
            continue
        start = int(data["window_start"][i])
        out.append(
            {
                "event_id": f"{symbol}:1m:{start}",
                "symbol": symbol,
                "interval": "1m",
                "ts": start + MINUTE,
                "window_start": start,
                "window_end": start + MINUTE,
                "open": float(data["open"][i]),
                "high": float(data["high"][i]),
                "low": float(data["low"][i]),
                "close": float(data["close"][i]),
                "volume": float(data["volume"][i]),
                "vwap": float(data["vwap"][i]),
                "trade_count": int(data["trade_count"][i]),
            }
        )
    return out


WARM = 250  # bars per symbol folded before the per-symbol figures' timing (TA-Lib needs a history)


def ticktape_states(warm: list[dict]) -> dict:
    """An ``IndicatorState`` per symbol with ``warm`` folded in."""
    states: dict[str, IndicatorState] = {}
    for bar in warm:
        states.setdefault(bar["symbol"], IndicatorState("1m")).update(bar)
    return states


class TaLibStreams:
    """TA-Lib's own incremental form of the same 20 values for one symbol: ``talib.stream``
    handles (TA-Lib 0.8) opened on a history of bars, then ``update`` per bar.  TA-Lib has
    no log return nor session VWAP: the log returns go through its STDDEV handle (scaled
    to ddof=1 and annualized) and the VWAP is two running sums, in Python."""

    def __init__(self, history: list[dict]):
        import talib.stream as ts

        c, h, lo, v = (np.array([b[k] for b in history]) for k in ("close", "high", "low", "volume"))
        self.closes = [getattr(ts, fn)(c, timeperiod=n) for _, fn, n in CLOSE_STREAMS]
        self.macd = ts.MACD(c, 12, 26, 9)
        self.bbands = ts.BBANDS(c, 20, 2.0, 2.0)
        self.atr = ts.ATR(h, lo, c, timeperiod=14)
        self.obv = ts.OBV(c, v)
        self.stddev = ts.STDDEV(np.log(c[1:] / c[:-1]), timeperiod=20)
        self.scale = math.sqrt(20 / 19) * math.sqrt(365 * 24 * 60)
        self.prev = float(c[-1])
        self.session = history[-1]["window_start"] // 86_400_000_000
        self.pv = sum(b["vwap"] * b["volume"] for b in history if b["window_start"] // 86_400_000_000 == self.session)
        self.volume = sum(b["volume"] for b in history if b["window_start"] // 86_400_000_000 == self.session)

    def update(self, bar: dict) -> list[float]:
        close = bar["close"]
        out = [s.update(close) for s in self.closes]
        out += self.macd.update(close)
        out += self.bbands.update(close)
        out.append(self.atr.update(bar["high"], bar["low"], close))
        out.append(self.obv.update(close, bar["volume"]))
        out.append(self.stddev.update(math.log(close / self.prev)) * self.scale)
        self.prev = close
        session = bar["window_start"] // 86_400_000_000  # the UTC day, as ticktape's session
        if session != self.session:
            self.session, self.pv, self.volume = session, 0.0, 0.0
        self.pv += bar["vwap"] * bar["volume"]
        self.volume += bar["volume"]
        out.append(self.pv / self.volume)
        return out


def talib_streams(warm: list[dict]) -> dict:
    """A ``TaLibStreams`` per symbol opened on its ``warm`` bars."""
    history: dict[str, list[dict]] = {}
    for bar in warm:
        history.setdefault(bar["symbol"], []).append(bar)
    return {sym: TaLibStreams(h) for sym, h in history.items()}


# TaLibStreams' handles on the close alone: (value, talib.stream function, period)
CLOSE_STREAMS = (
    *(("sma_10", "SMA", 10), ("sma_20", "SMA", 20), ("sma_50", "SMA", 50), ("sma_200", "SMA", 200)),
    *(("ema_12", "EMA", 12), ("ema_26", "EMA", 26), ("rsi_5", "RSI", 5), ("rsi_14", "RSI", 14)),
    *(("momentum_5", "MOM", 5), ("momentum_20", "MOM", 20)),
)
# the order of TaLibStreams.update's values
TALIB_ORDER = (
    *(name for name, _, _ in CLOSE_STREAMS),
    *("macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower", "atr_14", "obv", "volatility_20"),
    "vwap",
)


def check_talib_streams(warm: list[dict], bars: list[dict]) -> None:
    """TA-Lib's streams give ticktape's values on every bar (to 1e-9 relative), or raise."""
    ours, theirs = ticktape_states(warm), talib_streams(warm)
    for bar in bars:
        values = ours[bar["symbol"]].update(bar)
        assert values is not None
        for name, x in zip(TALIB_ORDER, theirs[bar["symbol"]].update(bar)):
            if not math.isclose(values[name], x, rel_tol=1e-9, abs_tol=1e-9):
                raise RuntimeError(
                    f"TA-Lib's stream gives {name} = {x!r}, ticktape {values[name]!r} ({bar['event_id']})"
                )


def update_rate(open_states: Callable[[], dict], bars: list[dict]) -> float:
    """Symbol-bars/s of ``update(bar)`` on per-symbol states made (untimed) by ``open_states``."""
    states = open_states()
    start = time.perf_counter()
    for bar in bars:
        states[bar["symbol"]].update(bar)
    return len(bars) / (time.perf_counter() - start)


def worker_rate(s, messages: list[tuple[bytes, bytes]], logs: Path) -> dict:
    """The indicators-only worker's rate on ``messages`` preloaded to md.bars.1m, once it
    has published one IndicatorSet per bar (and no more)."""
    ns = namespace(s, STAGE)
    total = len(messages)
    try:
        preload(ns, messages, "md.bars.1m")
        worker = Process(
            ns,
            ["ticktape.cli", "process", "worker"],
            logs / "worker.log",
            free_port(),
            WORKER_STAGES=STAGE,
            BAR_INTERVALS="1m",
        )
        try:
            rate = time_count([worker], total, "ticktape_events_in_total", 600, stage=STAGE, topic="md.bars.1m")
            time_count([worker], total, "ticktape_events_out_total", 60, stage=STAGE, topic="analytics.indicators")
            counts = (
                worker.metric("ticktape_events_in_total", stage=STAGE, topic="md.bars.1m"),
                worker.metric("ticktape_events_out_total", stage=STAGE, topic="analytics.indicators"),
            )
            if counts != (total, total):
                raise RuntimeError(f"{total:,} bars: {counts[0]:,.0f} in, {counts[1]:,.0f} indicator sets out")
            return rate
        finally:
            worker.stop()
    finally:
        drop(ns)


def run(quick: bool, runs: int) -> list[Figure]:
    symbols, bars, update_symbols = (20, 300, 2) if quick else (500, 2000, 10)
    # quick: still several worker batches (the rate is timed between them), start-up dominates
    e2e_symbols, e2e_bars = (20, 100) if quick else (500, 200)
    data = make_bars(symbols, bars)
    updates = bar_dicts(data, update_symbols)
    warm, updates = updates[: WARM * update_symbols], updates[WARM * update_symbols :]
    check_talib_streams(warm, updates)
    # interleaved: each run times ticktape's states, then TA-Lib's, on the same bars
    per_symbol = repeat(
        lambda: (
            update_rate(lambda: ticktape_states(warm), updates),
            update_rate(lambda: talib_streams(warm), updates),
        ),
        runs,
    )
    serde = Serde()
    messages = [
        (b["symbol"].encode(), serde.encode("bar", b)) for b in bar_dicts(make_bars(e2e_symbols, e2e_bars), e2e_symbols)
    ]
    s = services()
    logs = Path(tempfile.mkdtemp(prefix="bench-indicators-"))
    e2e = repeat(lambda: worker_rate(s, messages, logs), runs)
    return [
        Figure(
            "indicators",
            f"all 20 indicators, batch engine ({symbols} symbols x {bars} bars)",
            "symbol-bars/s",
            repeat(lambda: timed_rate(lambda: run_batch(data)), runs),
            goal=f">= {TARGET:,}",
            target=None if quick else TARGET,
            detail={"symbol_bars": symbols * bars},
        ),
        Figure(
            "indicators",
            f"all 20 indicators, per-symbol update ({update_symbols} symbols x {bars - WARM} bars after {WARM})",
            "symbol-bars/s",
            [r for r, _ in per_symbol],
            detail={"symbol_bars": len(updates)},
        ),
        Figure(
            "indicators",
            f"TA-Lib {talib.__version__} incremental form, talib.stream handles' update (same bars)",
            "symbol-bars/s",
            [r for _, r in per_symbol],
            detail={"symbol_bars": len(updates), "note": "log return, ddof and VWAP in Python"},
        ),
        Figure(
            "indicators",
            "per-symbol update / TA-Lib's incremental form, same run",
            "x",
            [a / b for a, b in per_symbol],
            goal=">= 1x",
            target=None if quick else 1.0,
        ),
        Figure(
            "indicators",
            f"indicators agent end to end, worker on the broker ({e2e_symbols} symbols x {e2e_bars} bars)",
            "symbol-bars/s",
            [r["rate"] for r in e2e],
            detail={"symbol_bars": len(messages), "interval": "1m", "seconds": [r["seconds"] for r in e2e]},
        ),
    ]


def main(argv=None) -> int:
    return bench_main("indicators", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the indicator engine: symbol-bars per second through all 20 indicators.

Pure core on one core, no I/O: seeded random-walk bars for S symbols × T bars, through
``compute_batch`` (numpy, one vectorized step per bar index across symbols) and through
``IndicatorState.update`` (one symbol at a time, as a stream processor calls it).
After one warm-up run, each case runs ``--runs`` times; the table shows the median and
the spread (min-max) of the rates, and the JSON goes to bench/results/indicators.json.

    python -m bench.bench_indicators            # full run
    python -m bench.bench_indicators --quick    # seconds-long smoke run
"""
from __future__ import annotations

import sys

import numpy as np

from bench.harness import Figure, bench_main, repeat, timed_rate
from ticktape.core.indicators import IndicatorState, compute_batch

TARGET = 200_000  # symbol-bars/s, batch path
MINUTE = 60_000_000


def make_bars(symbols: int, bars: int, seed: int = 42) -> dict:
    """Bars interleaved by time (row = bar index × symbols + symbol), as a CSV would hold them."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, (bars, symbols)), axis=0))
    spread = close * rng.uniform(0.0, 0.002, (bars, symbols))
    return {
        "n_symbols": symbols, "symbols": [f"SYM{j:04d}" for j in range(symbols)] * bars,
        "window_start": np.repeat(np.arange(bars, dtype=np.int64) * MINUTE, symbols),
        "open": close.ravel(), "high": (close + spread).ravel(), "low": (close - spread).ravel(),
        "close": close.ravel(), "volume": rng.uniform(1.0, 1000.0, (bars, symbols)).ravel(),
    }


def run_batch(data: dict) -> int:
    values = compute_batch(data["symbols"], data["window_start"], data["open"], data["high"],
                           data["low"], data["close"], data["volume"],
                           dict.fromkeys(data["symbols"], 60))
    return len(values)


def bar_dicts(data: dict, symbols: int) -> list[dict]:
    """The first ``symbols`` symbols as Bar event dicts, in time order."""
    keep = [i for i in range(len(data["symbols"])) if i % data["n_symbols"] < symbols]
    return [{"symbol": data["symbols"][i], "interval": "1m", "ts": int(data["window_start"][i]) + MINUTE,
             "window_start": int(data["window_start"][i]), "window_end": int(data["window_start"][i]) + MINUTE,
             "open": float(data["open"][i]), "high": float(data["high"][i]), "low": float(data["low"][i]),
             "close": float(data["close"][i]), "volume": float(data["volume"][i]), "vwap": None,
             "trade_count": 1} for i in keep]


def run_updates(bars: list[dict]) -> int:
    states: dict[str, IndicatorState] = {}
    for bar in bars:
        state = states.get(bar["symbol"])
        if state is None:
            state = states[bar["symbol"]] = IndicatorState("1m")
        state.update(bar)
    return len(bars)


def run(quick: bool, runs: int) -> list[Figure]:
    symbols, bars, update_symbols = (20, 300, 2) if quick else (500, 2000, 10)
    data = make_bars(symbols, bars)
    updates = bar_dicts(data, update_symbols)
    return [
        Figure("indicators", f"all 20 indicators, batch engine ({symbols} symbols x {bars} bars)", "symbol-bars/s",
               repeat(lambda: timed_rate(lambda: run_batch(data)), runs), goal=f">= {TARGET:,}",
               target=None if quick else TARGET, detail={"symbol_bars": symbols * bars}),
        Figure("indicators", f"all 20 indicators, per-symbol update ({update_symbols} symbols x {bars} bars)",
               "symbol-bars/s", repeat(lambda: timed_rate(lambda: run_updates(updates)), runs),
               detail={"symbol_bars": len(updates)}),
    ]


def main(argv=None) -> int:
    return bench_main("indicators", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the indicator engine: symbol-bars per second through all 20 indicators.

Pure core on one core, no I/O: seeded random-walk bars for S symbols × T bars, through
``compute_batch`` (numpy, one vectorized step per bar index across symbols) and through
``IndicatorState.update`` (one symbol at a time, as a stream processor calls it).
After one warm-up run, each case runs ``--runs`` times; the table shows the median and
the spread (min-max) of the rates, and the JSON goes to bench/results/indicators.json.

    python bench/bench_indicators.py            # full run
    python bench/bench_indicators.py --quick    # seconds-long smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ticktape.core.indicators import IndicatorState, compute_batch  # noqa: E402

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


def measure(fn, arg, runs: int) -> dict:
    fn(arg)  # warm-up
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        count = fn(arg)
        rates.append(count / (time.perf_counter() - start))
    return {"symbol_bars": count, "runs": runs, "median": statistics.median(rates),
            "min": min(rates), "max": max(rates), "rates": rates}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--bars", type=int, default=2000, help="bars per symbol")
    parser.add_argument("--update-symbols", type=int, default=10,
                        help="symbols for the per-symbol update() case (it is ~20x slower)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (20 symbols × 300 bars, 3 runs)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "indicators.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.symbols, args.bars, args.update_symbols, args.runs = 20, 300, 2, 3
    if args.runs < 3:
        parser.error("--runs must be at least 3")

    data = make_bars(args.symbols, args.bars)
    cases = {
        f"batch compute_batch ({args.symbols} symbols x {args.bars} bars)": measure(run_batch, data, args.runs),
        f"per-symbol IndicatorState.update ({min(args.update_symbols, args.symbols)} symbols x {args.bars} bars)":
            measure(run_updates, bar_dicts(data, args.update_symbols), args.runs),
    }
    print(f"{'case':<62} {'symbol-bars':>11} {'median/s':>11} {'min/s':>11} {'max/s':>11}")
    for name, r in cases.items():
        print(f"{name:<62} {r['symbol_bars']:>11,} {r['median']:>11,.0f} {r['min']:>11,.0f} {r['max']:>11,.0f}")
    batch = next(iter(cases.values()))
    # A quick run is too small to say anything about the target.
    target_met = None if args.quick else batch["median"] >= TARGET
    print(f"target {TARGET:,} symbol-bars/s (batch): "
          + {None: "not assessed (quick run)", True: "met", False: "NOT met"}[target_met])

    result = {
        "benchmark": "indicators", "unit": "symbol-bars/s", "target": TARGET,
        "target_met": target_met, "quick": args.quick,
        "params": {"symbols": args.symbols, "bars": args.bars, "update_symbols": args.update_symbols,
                   "runs": args.runs},
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "cases": cases,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

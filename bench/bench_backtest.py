"""Throughput of the in-process backtest pipeline (``ticktape.core.pipeline``), one core.

Input, built before timing: 1-minute bars of the seeded simulator for ``--symbols``
symbols, and a direction model trained on other simulated history.  Timed per stage
over the same bars: indicator sets (the engine's batch path), features + one-call
scoring, and both together (bars -> indicators -> features -> predictions).  The
trading chain's own rate is ``bench/bench_trading.py``'s.  After one warm-up run each
case runs ``--runs`` times; the table shows the median and the spread (min-max) of
bars/s, the JSON goes to bench/results/backtest.json.

    python bench/bench_backtest.py            # full run
    python bench/bench_backtest.py --quick    # seconds-long smoke run, no results file
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ticktape.core import pipeline  # noqa: E402
from ticktape.core.features import FEATURE_NAMES, Bars, build_dataset  # noqa: E402
from ticktape.core.ml import Model, TrainParams, train  # noqa: E402
from ticktape.core.simbars import simulated_bars  # noqa: E402

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00Z
MIN = 60_000_000


def build(n_symbols: int, minutes: int):
    symbols = [f"S{k:03d}" for k in range(n_symbols)]
    hist = simulated_bars(symbols[:10], seed=5, start_us=T0 - 2000 * MIN, minutes=1500, tick_rate=20.0)
    t = train(build_dataset(Bars.from_events(hist), "1m", 5), list(FEATURE_NAMES), 0.2,
              TrainParams(rounds=50), "direction")
    model = Model.load(t.artifact, t.metadata)
    bars = simulated_bars(symbols, seed=9, start_us=T0, minutes=minutes, tick_rate=n_symbols * 0.5)
    return model, bars


def case_indicators(bars, model):
    return len(pipeline.indicator_sets(bars))


def case_predict(inds, model):
    return len(pipeline.predictions(inds, model)[0])


def case_both(bars, model):
    return len(pipeline.predictions(pipeline.indicator_sets(bars), model)[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--minutes", type=int, default=1000, help="minutes of simulated 1-min bars")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="10 symbols x 300 minutes, 3 runs, no results file")
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "backtest.json")
    args = ap.parse_args()
    if args.quick:
        args.symbols, args.minutes, args.runs = 10, 300, 3
    model, bars = build(args.symbols, args.minutes)
    inds = pipeline.indicator_sets(bars)
    cases = (("indicator sets (batch engine)", case_indicators, bars),
             ("features + scoring", case_predict, inds),
             ("bars -> indicators -> predictions", case_both, bars))
    rows = []
    for name, fn, data in cases:
        fn(data, model)  # warm-up
        rates, produced = [], 0
        for _ in range(args.runs):
            start = time.perf_counter()
            produced = fn(data, model)
            rates.append(len(bars) / (time.perf_counter() - start))
        rows.append({"case": name, "bars": len(bars), "outputs": produced,
                     "median_bars_per_s": round(statistics.median(rates)),
                     "min_bars_per_s": round(min(rates)), "max_bars_per_s": round(max(rates))})
    print(f"{'case':<36}{'bars':>8}{'outputs':>9}{'bars/s (median)':>17}{'min-max':>21}")
    for r in rows:
        spread = f"{r['min_bars_per_s']}-{r['max_bars_per_s']}"
        print(f"{r['case']:<36}{r['bars']:>8}{r['outputs']:>9}{r['median_bars_per_s']:>17}{spread:>21}")
    if not args.quick:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "benchmark": "backtest", "symbols": args.symbols, "minutes": args.minutes, "runs": args.runs,
            "model_features": len(model.features), "python": platform.python_version(),
            "machine": platform.machine(), "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

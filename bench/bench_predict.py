"""Inference speed of the predict stage's scoring path: predictions/s and p99 latency.

Pure core on one core, no I/O: a model trained with `ticktape train`'s defaults on
simulator bars, then ``Model.predictions`` (feature selection, XGBoost, Prediction
events) as the agent calls it — in batches of ``--batch`` indicator sets (several sets
waiting) and one set at a time (the single-row path).  A prediction's latency is the
scoring time of the call it was in.  After a warm-up, each case runs ``--runs`` times;
the table shows the median rate with its spread and the median p99; the JSON goes to
bench/results/predict.json.

    python bench/bench_predict.py            # full run
    python bench/bench_predict.py --quick    # seconds-long smoke run
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
import xgboost as xgb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ticktape.core.features import FEATURE_NAMES, Bars, build_dataset  # noqa: E402
from ticktape.core.ml import Model, TrainParams, train  # noqa: E402
from ticktape.core.simbars import simulated_bars  # noqa: E402

T0 = 1_767_225_600_000_000


def make_items(symbols: int, minutes: int, rounds: int):
    bars = simulated_bars([f"S{i:03d}" for i in range(symbols)], seed=42, start_us=T0, minutes=minutes,
                          tick_rate=symbols * 0.5)
    ds = build_dataset(Bars.from_events(bars), "1m", 5)
    trained = train(ds, FEATURE_NAMES, 0.2, TrainParams(rounds=rounds), "direction", "sim")
    model = Model.load(trained.artifact, trained.metadata)
    complete = ~np.isnan(ds.X).any(axis=1)
    items = [({"event_id": f"{s}:1m:{t}", "symbol": s, "interval": "1m", "ts": int(t)}, x.tolist())
             for s, t, x in zip(np.array(ds.symbols)[complete], ds.ts[complete], ds.X[complete])]
    return model, items, len(trained.artifact)


def run_case(model: Model, items: list, batch: int) -> dict:
    latencies = []
    n = 0
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        preds, missing, seconds = model.predictions(chunk)
        assert missing == 0 and len(preds) == len(chunk)
        latencies.extend([seconds] * len(preds))
        n += len(preds)
    elapsed = time.perf_counter() - start
    return {"rate": n / elapsed, "p99": float(np.percentile(latencies, 99)),
            "p50": float(np.percentile(latencies, 50)), "predictions": n}


def measure(model, items, batch: int, runs: int) -> dict:
    run_case(model, items[: min(len(items), 4 * batch)], batch)  # warm-up
    results = [run_case(model, items, batch) for _ in range(runs)]
    rates = [r["rate"] for r in results]
    return {"batch": batch, "predictions": results[0]["predictions"], "runs": runs,
            "median": statistics.median(rates), "min": min(rates), "max": max(rates), "rates": rates,
            "p99_s": statistics.median(r["p99"] for r in results),
            "p50_s": statistics.median(r["p50"] for r in results)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--minutes", type=int, default=600, help="simulated minutes of 1-min bars")
    parser.add_argument("--rounds", type=int, default=TrainParams.rounds, help="boosting rounds of the model")
    parser.add_argument("--batch", type=int, default=256, help="indicator sets per call in the batch case")
    parser.add_argument("--single", type=int, default=2000, help="predictions in the single-row case")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (3 symbols x 260 minutes, 3 runs)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "predict.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.symbols, args.minutes, args.rounds, args.single, args.runs = 3, 260, 20, 100, 3
    if args.runs < 3:
        parser.error("--runs must be at least 3")

    model, items, artifact_bytes = make_items(args.symbols, args.minutes, args.rounds)
    cases = {
        f"batch ({args.batch} sets per call)": measure(model, items, args.batch, args.runs),
        "single row (1 set per call)": measure(model, items[: args.single], 1, args.runs),
    }
    print(f"model: {args.rounds} trees, depth {TrainParams.max_depth}, {len(FEATURE_NAMES)} features, "
          f"{artifact_bytes:,} bytes; {len(items):,} complete indicator sets")
    print(f"{'case':<30} {'predictions':>11} {'median/s':>10} {'min/s':>10} {'max/s':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for name, r in cases.items():
        print(f"{name:<30} {r['predictions']:>11,} {r['median']:>10,.0f} {r['min']:>10,.0f} {r['max']:>10,.0f} "
              f"{r['p50_s'] * 1e3:>8.3f} {r['p99_s'] * 1e3:>8.3f}")
    print("latency = scoring time of the call a prediction was in (a batch's predictions share it)")

    result = {
        "benchmark": "predict", "unit": "predictions/s", "quick": args.quick,
        "params": {"symbols": args.symbols, "minutes": args.minutes, "rounds": args.rounds,
                   "batch": args.batch, "single": args.single, "runs": args.runs},
        "model": {"trees": args.rounds, "max_depth": TrainParams.max_depth, "features": len(FEATURE_NAMES),
                  "artifact_bytes": artifact_bytes},
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "xgboost": xgb.__version__,
                    "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "cases": cases,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

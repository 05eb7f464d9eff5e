"""Inference speed of the predict stage's scoring path: predictions/s and p99 latency.

Pure core on one core, no I/O: a model trained with `ticktape train`'s defaults on
simulator bars, then ``Model.predictions`` (feature selection, XGBoost, Prediction
events) as the agent calls it — in batches of 256 indicator sets (several sets
waiting) and one set at a time (the single-row path).  A prediction's latency is the
scoring time of the call it was in.  After a warm-up, each case runs ``--runs`` times;
the table shows the median rate and p99 with their spread; the JSON goes to
bench/results/predict.json.

    python -m bench.bench_predict            # full run
    python -m bench.bench_predict --quick    # seconds-long smoke run
"""

from __future__ import annotations

import sys
import time

import numpy as np
import xgboost as xgb

from bench.harness import Figure, bench_main, repeat
from ticktape.core.features import FEATURE_NAMES, Bars, build_dataset
from ticktape.core.ml import Model, TrainParams, train
from ticktape.core.simbars import simulated_bars

T0 = 1_767_225_600_000_000


def make_items(symbols: int, minutes: int, rounds: int):
    bars = simulated_bars(
        [f"S{i:03d}" for i in range(symbols)], seed=42, start_us=T0, minutes=minutes, tick_rate=symbols * 0.5
    )
    ds = build_dataset(Bars.from_events(bars), "1m", 5)
    trained = train(ds, FEATURE_NAMES, 0.2, TrainParams(rounds=rounds), "direction", "sim")
    model = Model.load(trained.artifact, trained.metadata)
    complete = ~np.isnan(ds.X).any(axis=1)
    items = [
        (
            {
                "event_id": f"{s}:1m:{t}",
                "symbol": s,
                "interval": "1m",
                "ts": int(t),
                "close": 100.0,
                "volatility_20": 0.2,
            },
            x.tolist(),
        )
        for s, t, x in zip(np.array(ds.symbols)[complete], ds.ts[complete], ds.X[complete])
    ]
    return model, items, len(trained.artifact)


def run_case(model: Model, items: list, batch: int) -> dict:
    latencies = []
    n = 0
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        preds, missing, seconds = model.predictions(chunk)
        assert missing == 0 and len(preds) == len(chunk)
        latencies.extend([seconds] * len(preds))
        n += len(preds)
    elapsed = time.perf_counter() - start
    return {
        "rate": n / elapsed,
        "p99": float(np.percentile(latencies, 99)),
        "p50": float(np.percentile(latencies, 50)),
        "predictions": n,
    }


def run(quick: bool, runs: int) -> list[Figure]:
    symbols, minutes, rounds, single, batch = (
        (3, 260, 20, 100, 256) if quick else (20, 600, TrainParams.rounds, 2000, 256)
    )
    model, items, artifact_bytes = make_items(symbols, minutes, rounds)
    params = {
        "trees": rounds,
        "max_depth": TrainParams.max_depth,
        "features": len(FEATURE_NAMES),
        "artifact_bytes": artifact_bytes,
        "xgboost": xgb.__version__,
    }
    figures = []
    for label, data, size in ((f"batches of {batch}", items, batch), ("one at a time", items[:single], 1)):
        results = repeat(lambda data=data, size=size: run_case(model, data, size), runs)
        detail = params | {"batch": size, "predictions": results[0]["predictions"]}
        figures += [
            Figure(
                "predict", f"XGBoost scoring, {label}", "predictions/s", [r["rate"] for r in results], detail=detail
            ),
            Figure(
                "predict",
                f"XGBoost scoring, {label}: p99 per prediction",
                "ms",
                [r["p99"] * 1e3 for r in results],
                higher_is_better=False,
                detail=detail,
            ),
        ]
    return figures


def main(argv=None) -> int:
    return bench_main("predict", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the in-process backtest pipeline (``ticktape.core.pipeline``), one core.

Input, built before timing: 1-minute bars of the seeded simulator for ``--symbols``
symbols, and a direction model trained on other simulated history.  Timed per stage
over the same bars: indicator sets (the engine's batch path), features + one-call
scoring, and both together (bars -> indicators -> features -> predictions).  The
trading chain's own rate is ``bench/bench_trading.py``'s.  After one warm-up run each
case runs ``--runs`` times; the table shows the median and the spread (min-max) of
bars/s, the JSON goes to bench/results/backtest.json.

    python -m bench.bench_backtest            # full run
    python -m bench.bench_backtest --quick    # seconds-long smoke run
"""
from __future__ import annotations

from bench.harness import Figure, bench_main, repeat, timed_rate
from ticktape.core import pipeline
from ticktape.core.features import FEATURE_NAMES, Bars, build_dataset
from ticktape.core.ml import Model, TrainParams, train
from ticktape.core.simbars import simulated_bars

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


def run(quick: bool, runs: int) -> list[Figure]:
    symbols, minutes = (10, 300) if quick else (50, 1000)
    model, bars = build(symbols, minutes)
    inds = pipeline.indicator_sets(bars)
    cases = (("indicator sets (batch engine)", case_indicators, bars),
             ("features + scoring", case_predict, inds),
             ("bars -> indicators -> predictions", case_both, bars))
    figures = []
    for name, fn, data in cases:
        outputs = fn(data, model)

        def once() -> int:
            fn(data, model)
            return len(bars)

        figures.append(Figure("backtest", f"in-process {name} ({symbols} symbols x {minutes} min)", "bars/s",
                              repeat(lambda: timed_rate(once), runs),
                              detail={"bars": len(bars), "outputs": outputs, "model_features": len(model.features)}))
    return figures


def main(argv=None) -> int:
    return bench_main("backtest", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput of backtests: in process (``ticktape.core.backtest``, one core) and in
kafka mode (``ticktape.backtest_kafka``: the real worker on the local broker).

In process, input built before timing: 1-minute bars of the seeded simulator (50
symbols x 2000 minutes, more than a day; quick: 10 x 300) and a direction model trained
on other simulated history.  Timed over the same bars: indicator sets (the engine's
batch path), features + one-call scoring, both, and the full pipeline (indicators,
predictions, strategy, risk, paper execution on the next bar, portfolio: ``run_bars``)
— bars/s, the goal is the issue's 50,000 bars/s — beside backtesting.py on the same
bars (an EMA cross per symbol, in the peers' venv: bench/peers/backtesting_ema.py); and
the full pipeline from ticks (bars aggregated from the simulator's ticks, fills on the
next tick: ``run``) — ticks/s.

Kafka mode: a seeded simulator period replayed into ``bt.<run_id>.md.ticks`` and run
through the worker until it settles, timed from the worker's first tick taken to its
last output (its start-up and the settling wait excluded) — replayed events/s.

    python -m bench.bench_backtest            # full run
    python -m bench.bench_backtest --quick    # seconds-long smoke run
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import uuid
from collections import defaultdict

import yaml

from bench.harness import Figure, bench_main, repeat, services, timed_rate
from ticktape.core import backtest as bt
from ticktape.core import pipeline
from ticktape.core.execution import ExecConfig
from ticktape.core.replay import partition_for
from ticktape.core.sim import MarketSimulator
from ticktape.core.strategy import StrategyConfig
from ticktape.core.features import FEATURE_NAMES, Bars, build_dataset
from ticktape.core.ml import Model, TrainParams, train
from ticktape.core.simbars import simulated_bars

BACKTESTING_PY = "0.6.6"  # bench/peers/requirements.txt
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00Z
MIN = 60_000_000


def build(n_symbols: int, minutes: int):
    symbols = [f"S{k:03d}" for k in range(n_symbols)]
    hist = simulated_bars(symbols[:10], seed=5, start_us=T0 - 2000 * MIN, minutes=1500, tick_rate=20.0)
    t = train(
        build_dataset(Bars.from_events(hist), "1m", 5), list(FEATURE_NAMES), 0.2, TrainParams(rounds=50), "direction"
    )
    model = Model.load(t.artifact, t.metadata)
    bars = simulated_bars(symbols, seed=9, start_us=T0, minutes=minutes, tick_rate=n_symbols * 0.5)
    return model, bars


def case_indicators(bars, model):
    return len(pipeline.indicator_sets(bars))


def case_predict(inds, model):
    return len(pipeline.predictions(inds, model)[0])


def case_both(bars, model):
    return len(pipeline.predictions(pipeline.indicator_sets(bars), model)[0])


def setup(symbols, market_data: str, intervals=("1m",)) -> bt.Setup:
    from ticktape.risk_config import DEFAULT_RISK_CONFIG, load_risk_limits

    # a strategy that trades: thresholds near 0.5 and a short hold
    return bt.Setup(
        tuple(intervals),
        500_000,
        StrategyConfig(enter_p=0.52, exit_p=0.51, min_hold_bars=1),
        ExecConfig(),
        load_risk_limits(DEFAULT_RISK_CONFIG),
        yaml.safe_load(DEFAULT_RISK_CONFIG.read_text()),
        1_000_000.0,
        tuple(symbols),
        market_data,
    )


def sim_ticks(symbols, minutes: float, rate: float, partitions: int = 6) -> dict[int, list[dict]]:
    """The simulator's ticks over ``minutes`` per partition, then the flush ticks."""
    sim = MarketSimulator(symbols, seed=9, tick_rate=rate, start_us=T0)
    end = T0 + int(minutes * MIN)
    out = defaultdict(list)
    done = False
    while not done:
        for t in sim.next_chunk():
            if t["ts"] > end:
                done = True
                break
            out[partition_for(t["symbol"], partitions)].append(t)
    ticks = {p: out[p] for p in range(partitions)}
    for f in bt.flush_ticks(end, setup(symbols, "ticks"), partitions):
        ticks[f["seq"]].append(f)
    return ticks


def kafka_mode(quick: bool, runs: int) -> Figure:
    """Replayed events/s of a kafka-mode backtest, from the worker's first tick taken to
    its last output (its start-up and the settling wait excluded)."""
    from ticktape import backtest_kafka

    symbols = [f"S{k:03d}" for k in range(6)]
    ticks = sim_ticks(symbols, 1 if quick else 10, 100.0)
    n_ticks = sum(map(len, ticks.values()))
    s = dataclasses.replace(services(), symbols=" ".join(symbols), bar_intervals="1s,1m")
    counts = []

    def once() -> float:
        timing: dict = {}
        events = backtest_kafka.run(s, f"bench{uuid.uuid4().hex[:8]}", ticks, None, timing=timing)
        counts.append(len(events["bar"]))
        return n_ticks / timing["processing_s"]

    # no warm-up: every run starts a worker of its own in a namespace of its own
    values = repeat(once, runs, warmup=0)
    return Figure(
        "backtest",
        f"kafka mode: ticks replayed through the worker, start-up excluded "
        f"({len(symbols)} symbols, 1s+1m bars, no model)",
        "events/s",
        values,
        goal=">= 20,000",
        target=20_000,
        detail={"ticks": n_ticks, "bars": counts[-1]},
    )


def backtesting_py(bars: list[dict], runs: int) -> tuple[list[float], list[int]]:
    """backtesting.py's bars per CPU-second (and trades) per run on the same bars: an EMA
    12/26 cross per symbol (bench/peers/backtesting_ema.py, in the peers' venv)."""
    from bench.bench_peers import PEERS, peer_python

    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(bars, f)
        f.flush()
        done = subprocess.run(
            [peer_python(), str(PEERS / "backtesting_ema.py"), f.name, str(runs)],
            check=True,
            capture_output=True,
            text=True,
        )
    results = [json.loads(line) for line in done.stdout.splitlines()][1:]  # the first: its warm-up
    return [r["bars"] / r["seconds"] for r in results], [r["trades"] for r in results]


def run(quick: bool, runs: int) -> list[Figure]:
    # more than a day of 1-minute bars: past a day, the execution desk prunes its memory
    symbols, minutes = (10, 300) if quick else (50, 2000)
    model, bars = build(symbols, minutes)
    inds = pipeline.indicator_sets(bars)
    cases = (
        ("indicator sets (batch engine)", case_indicators, bars),
        ("features + scoring", case_predict, inds),
        ("bars -> indicators -> predictions", case_both, bars),
    )
    figures = []
    for name, fn, data in cases:
        outputs = fn(data, model)

        def once(fn=fn, data=data) -> int:
            fn(data, model)
            return len(bars)

        figures.append(
            Figure(
                "backtest",
                f"in-process {name} ({symbols} symbols x {minutes} min)",
                "bars/s",
                repeat(lambda: timed_rate(once), runs),
                detail={"bars": len(bars), "outputs": outputs, "model_features": len(model.features)},
            )
        )

    symbols_list = sorted({b["symbol"] for b in bars})
    su_bars = setup(symbols_list, "bars")
    events = bt.run_bars(bars, su_bars, model)

    def full_run() -> int:
        bt.run_bars(bars, su_bars, model)
        return len(bars)

    figures.append(
        Figure(
            "backtest",
            f"in-process full pipeline: bars -> indicators -> predictions -> strategy, "
            f"risk, execution, portfolio ({symbols} symbols x {minutes} min)",
            "bars/s",
            repeat(lambda: timed_rate(full_run), runs),
            goal=">= 50,000",
            target=50_000,
            detail={
                "bars": len(bars),
                "predictions": len(events["prediction"]),
                "orders": len(events["order"]),
                "fills": len(events["fill"]),
                "equity_events": len(events["equity"]),
            },
        )
    )

    peer_rates, peer_trades = backtesting_py(bars, runs)
    figures.append(
        Figure(
            "backtest",
            f"backtesting.py {BACKTESTING_PY}: an EMA 12/26 cross per symbol, a Backtest each (same bars)",
            "bars/s",
            peer_rates,
            detail={"bars": len(bars), "trades": peer_trades[-1]},
        )
    )

    tick_symbols = symbols_list[:10]
    ticks = sim_ticks(tick_symbols, 60 if quick else 120, 100.0)
    n_ticks = sum(map(len, ticks.values()))
    su = setup(tick_symbols, "ticks", ("1s", "1m"))
    tick_events = bt.run(ticks, su, model)

    def from_ticks() -> int:
        bt.run(ticks, su, model)
        return n_ticks

    figures.append(
        Figure(
            "backtest",
            f"in-process full pipeline from ticks (1s+1m bars, fills on ticks; "
            f"{len(tick_symbols)} symbols, 100 ticks/s)",
            "ticks/s",
            repeat(lambda: timed_rate(from_ticks), runs),
            detail={
                "ticks": n_ticks,
                "bars": len(tick_events["bar"]),
                "predictions": len(tick_events["prediction"]),
                "orders": len(tick_events["order"]),
                "fills": len(tick_events["fill"]),
            },
        )
    )
    figures.append(kafka_mode(quick, runs))
    return figures


def main(argv=None) -> int:
    return bench_main("backtest", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

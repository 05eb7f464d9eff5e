"""Backtests: performance figures on known series, the in-process engine's determinism,
kafka mode against in-process mode, isolation from live topics and tables, and a
backtest against the live pipeline over the same period."""
from __future__ import annotations

import math

import pytest

from ticktape.core import performance as perf

MIN = 60_000_000
T0 = 1_704_205_800_000_000  # 2024-01-02T14:30:00Z


# --- performance figures ----------------------------------------------------------------

def test_resample_last_keeps_the_last_value_per_period():
    points = [(T0, 1.0), (T0 + 1, 2.0), (T0 + MIN - 1, 3.0), (T0 + MIN, 4.0), (T0 + 3 * MIN + 5, 5.0)]
    assert perf.resample_last(points, MIN) == [(T0, 1.0), (T0 + MIN, 4.0), (T0 + 4 * MIN, 5.0)]


def test_figures_on_a_known_series():
    curve = [(T0 + i * MIN, v) for i, v in enumerate([100.0, 110.0, 99.0, 108.9, 108.9])]
    rets = [0.1, -0.1, 0.1, 0.0]
    ppy = 365 * 24 * 60
    mean = 0.025
    std = math.sqrt(sum((r - mean) ** 2 for r in rets) / 3)
    down = math.sqrt(0.01 / 4)
    out = perf.summarize(curve, [], MIN)
    assert out["total_return"] == pytest.approx(0.089, abs=1e-15)
    assert out["sharpe"] == pytest.approx(mean / std * math.sqrt(ppy), rel=1e-12)
    assert out["sortino"] == pytest.approx(mean / down * math.sqrt(ppy), rel=1e-12)
    assert out["max_drawdown"] == pytest.approx(0.1, abs=1e-15)  # 110 -> 99
    assert out["cagr"] is None  # +8.9 % in 4 minutes does not annualize to a float
    assert (out["win_rate"], out["closing_trades"], out["turnover"]) == (None, 0, 0.0)


def test_cagr_over_two_years():
    year = 365 * 86400 * 1_000_000
    out = perf.summarize([(T0, 100.0), (T0 + year, 90.0), (T0 + 2 * year, 121.0)], [], year)
    assert out["cagr"] == pytest.approx(0.1, rel=1e-12)
    assert out["max_drawdown"] == pytest.approx(0.1, rel=1e-12)


def test_degenerate_curves_have_no_ratios():
    flat = [(T0 + i * MIN, 100.0) for i in range(5)]
    out = perf.summarize(flat, [], MIN)
    assert (out["sharpe"], out["sortino"], out["max_drawdown"], out["total_return"]) == (None, None, 0.0, 0.0)
    one = perf.summarize([(T0, 100.0)], [], MIN)
    assert (one["cagr"], one["sharpe"]) == (None, None)


def _fill(symbol, side, qty, price):
    return {"symbol": symbol, "side": side, "quantity": qty, "price": price, "commission": 1.0}


def test_win_rate_and_turnover_from_fills():
    fills = [_fill("A", "BUY", 10, 100.0), _fill("A", "BUY", 10, 110.0),   # long 20 @ 105
             _fill("A", "SELL", 5, 104.0),                                  # closes 5: -5 (loss)
             _fill("A", "SELL", 25, 107.0),                                 # closes 15: +30, short 10 @ 107
             _fill("A", "BUY", 10, 100.0),                                  # closes 10: +70
             _fill("B", "SELL", 3, 50.0), _fill("B", "BUY", 3, 50.0)]       # short, flat: 0 (not a win)
    assert perf.closing_trade_pnls(fills) == [-5.0, 30.0, 70.0, 0.0]
    curve = [(T0, 1000.0), (T0 + MIN, 1000.0)]
    out = perf.summarize(curve, fills, MIN)
    assert out["win_rate"] == 0.5 and out["closing_trades"] == 4
    notional = 1000 + 1100 + 520 + 25 * 107 + 1000 + 150 + 150
    assert out["traded_notional"] == notional and out["turnover"] == notional / 1000.0


# --- the in-process pipeline -------------------------------------------------------------

import json  # noqa: E402
from collections import defaultdict  # noqa: E402

from ticktape.core import pipeline  # noqa: E402
from ticktape.core.bars import BarAggregator  # noqa: E402
from ticktape.core.features import FEATURE_NAMES, Bars, FeatureState, build_dataset  # noqa: E402
from ticktape.core.indicators import IndicatorState, indicator_event  # noqa: E402
from ticktape.core.ml import Model, TrainParams, train  # noqa: E402
from ticktape.core.replay import partition_for  # noqa: E402
from ticktape.core.sim import MarketSimulator  # noqa: E402
from ticktape.core.simbars import simulated_bars  # noqa: E402

SYMS = ["AAA", "BBB", "CCC", "DDD", "EEE"]
SHORT = [f for f in FEATURE_NAMES if f not in ("sma_200_rel", "sma_50_rel")]


@pytest.fixture(scope="module")
def model():
    hist = simulated_bars(SYMS, seed=5, start_us=T0 - 600 * MIN, minutes=480, tick_rate=5.0)
    t = train(build_dataset(Bars.from_events(hist), "1m", 5), SHORT, 0.2, TrainParams(rounds=15), "direction")
    return Model.load(t.artifact, t.metadata)


def sim_by_partition(minutes: float, rate: float = 10.0, partitions: int = 6):
    sim = MarketSimulator(SYMS, seed=9, tick_rate=rate, start_us=T0)
    ticks = []
    end = T0 + int(minutes * MIN)
    while not ticks or ticks[-1]["ts"] < end:
        ticks.extend(sim.next_chunk())
    out = defaultdict(list)
    for t in ticks:
        if t["ts"] <= end:
            out[partition_for(t["symbol"], partitions)].append(t)
    return dict(out)


def agent_path(ticks_by_partition, intervals, grace_us, model):
    """The agents' way, event by event: aggregator per partition fed tick by tick, one
    IndicatorState and FeatureState per (interval, symbol), one model call per set."""
    bars, inds, preds = [], [], []
    ind_states, feat_states = {}, {}
    for p in sorted(ticks_by_partition):
        agg = BarAggregator(intervals, grace_us)
        for tick in ticks_by_partition[p]:
            for bar in agg.add(tick).bars:
                bars.append(bar)
                key = (bar["interval"], bar["symbol"])
                st = ind_states.setdefault(key, IndicatorState(bar["interval"]))
                ind = indicator_event(bar, st.update(bar))
                inds.append(ind)
                vec = feat_states.setdefault(key, FeatureState()).update(ind)
                if ind["interval"] == model.interval:
                    preds.extend(model.predictions([(ind, vec)])[0])
    return bars, inds, preds


def test_pipeline_equals_the_agents_event_by_event_path(model):
    ticks = sim_by_partition(45)
    out = pipeline.run(ticks, ["1s", "1m"], 500_000, model)
    bars, inds, preds = agent_path(ticks, ["1s", "1m"], 500_000, model)
    key = lambda e: (e["ts"], e["event_id"])  # noqa: E731
    assert sorted(out.bars["1s"] + out.bars["1m"], key=key) == sorted(bars, key=key)
    assert json.dumps(sorted(out.indicators, key=key)) == json.dumps(sorted(inds, key=key))
    assert json.dumps(sorted(out.predictions, key=key)) == json.dumps(sorted(preds, key=key))
    n_1m = len(out.bars["1m"])
    assert n_1m >= 40 * len(SYMS) and len(out.predictions) == n_1m - out.skipped_predictions
    assert len(out.predictions) > 50  # the short feature list fills after ~21 bars


def test_pipeline_is_byte_identical_twice(model):
    ticks = sim_by_partition(20)
    a = pipeline.run(ticks, ["1s", "1m"], 500_000, model)
    b = pipeline.run(sim_by_partition(20), ["1s", "1m"], 500_000, model)
    assert json.dumps(a.__dict__) == json.dumps(b.__dict__)

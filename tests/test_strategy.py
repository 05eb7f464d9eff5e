"""Strategy: thresholds with hysteresis, minimum holding period, sizing, the ts join."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticktape.config import ConfigError
from ticktape.config import settings as make_settings
from ticktape.core.strategy import (JOIN_BUFFER, Strategy, StrategyConfig, on_indicator_set,
                                    on_prediction)
from trading_events import MIN, T0, assert_schema, indicator_set, prediction


def step(st_, i, p_up, close=100.0, vol=0.25, symbol="AAPL"):
    """One bar: its IndicatorSet, then its Prediction; the signals emitted."""
    ts = T0 + i * MIN
    return on_indicator_set(st_, indicator_set(symbol, ts, close, vol)) + on_prediction(
        st_, prediction(symbol, ts, p_up))


def targets(cfg, p_ups, **kw):
    st_ = Strategy(cfg)
    return [[s["target_position"] for s in step(st_, i, p, **kw)] for i, p in enumerate(p_ups)]


def test_entry_signal_is_exact():
    st_ = Strategy(StrategyConfig(min_hold_bars=0))
    assert step(st_, 0, 0.59, close=123.0) == []
    [sig] = step(st_, 1, 0.61, close=123.0)
    assert sig == {
        "event_id": f"sig:paper:pred:AAPL:1m:{T0 + MIN}:xgb:3", "account": "paper", "symbol": "AAPL",
        "ts": T0 + MIN, "side": "BUY", "quantity": 81.0, "target_position": 81.0,
        "reference_price": 123.0, "strategy": "p_up_hysteresis",
        "reason": "p_up 0.6100 >= 0.6: flat -> long (fixed_notional 10000.00 @ 123)",
        "model_version": "3"}
    assert_schema("signal", sig)


def test_hysteresis_band_holds_then_exits():
    cfg = StrategyConfig(min_hold_bars=0)
    # enter at .61, hold at .56 and .55 (>= exit .55), exit at .549
    assert targets(cfg, [0.61, 0.56, 0.55, 0.549, 0.58]) == [[100.0], [], [], [0.0], []]
    st_ = Strategy(cfg)
    step(st_, 0, 0.61)
    [exit_] = step(st_, 1, 0.5)
    assert (exit_["side"], exit_["quantity"], exit_["reason"]) == ("SELL", 100.0, "p_up 0.5000 < 0.55: long -> flat")


def test_shorts_mirror_and_flip_directly():
    cfg = StrategyConfig(min_hold_bars=0)
    # short at .40 (<= 1 - .6), hold at .45, exit at .451, flip straight to long/short
    assert targets(cfg, [0.40, 0.45, 0.451, 0.3, 0.7]) == [[-100.0], [], [0.0], [-100.0], [100.0]]
    st_ = Strategy(cfg)
    step(st_, 0, 0.3)
    [flip] = step(st_, 1, 0.65)
    assert (flip["side"], flip["quantity"], flip["target_position"]) == ("BUY", 200.0, 100.0)
    assert flip["reason"] == "p_up 0.6500 >= 0.6: short -> long (fixed_notional 10000.00 @ 100)"
    assert targets(StrategyConfig(min_hold_bars=0, sides="long_only"), [0.3, 0.7, 0.2]) == [[], [100.0], [0.0]]


def test_minimum_holding_period_in_bars():
    cfg = StrategyConfig(min_hold_bars=3)
    # entered at bar 0: the exit wish at bars 1 and 2 waits, bar 3 may change
    assert targets(cfg, [0.7, 0.1, 0.1, 0.1, 0.1, 0.9]) == [[100.0], [], [], [-100.0], [], []]


def test_vol_target_sizing_and_missing_volatility():
    cfg = StrategyConfig(min_hold_bars=0, sizing="vol_target", notional=10_000.0, vol_target=0.2,
                         max_vol_scale=3.0)
    # 10000 * 0.2/0.4 = 5000 notional at 50 -> 100 shares; vol 0.01 is capped at 3x -> 600
    assert targets(cfg, [0.7], close=50.0, vol=0.4) == [[100.0]]
    assert targets(cfg, [0.7], close=50.0, vol=0.01) == [[600.0]]
    assert targets(cfg, [0.7, 0.7], close=50.0, vol=None) == [[], []]
    # lots: 10000/30 = 333.3 -> 300 in lots of 100; an unaffordable lot is no entry
    assert targets(StrategyConfig(lot_size=100.0), [0.7], close=30.0) == [[300.0]]
    assert targets(StrategyConfig(), [0.7], close=20_000.0) == [[]]


def test_other_intervals_ignored_and_bad_probability_refused():
    st_ = Strategy(StrategyConfig())
    assert on_indicator_set(st_, indicator_set("AAPL", T0, 100.0, interval="1s")) == []
    assert on_prediction(st_, prediction("AAPL", T0, 0.9, interval="1s")) == []
    assert st_.symbols == {}
    with pytest.raises(ValueError, match=r"p_up=1.5 is not a probability"):
        on_prediction(st_, prediction("AAPL", T0, 1.5))


def test_redelivered_inputs_change_nothing():
    st_ = Strategy(StrategyConfig(min_hold_bars=0))
    ind, pred = indicator_set("AAPL", T0, 100.0), prediction("AAPL", T0, 0.9)
    assert len(on_indicator_set(st_, ind) + on_prediction(st_, pred)) == 1
    assert on_indicator_set(st_, ind) + on_prediction(st_, pred) == []


def test_prediction_without_its_indicators_is_counted_not_decided():
    st_ = Strategy(StrategyConfig(min_hold_bars=0))
    on_prediction(st_, prediction("AAPL", T0, 0.9))
    # the next bar's indicators arrive: the bar-T prediction can never be joined
    assert on_indicator_set(st_, indicator_set("AAPL", T0 + MIN, 100.0)) == []
    assert st_.unmatched_predictions == 1
    for i in range(JOIN_BUFFER + 5):  # predictions piling up without indicators stay bounded
        on_prediction(st_, prediction("AAPL", T0 + (i + 2) * MIN, 0.5))
    assert len(st_.symbols["AAPL"].preds) == JOIN_BUFFER
    assert st_.unmatched_predictions == 6


def test_config_from_settings_and_validation():
    cfg = StrategyConfig.from_settings(make_settings(strategy_enter_p=0.7, strategy_exit_p=0.6))
    assert (cfg.enter_p, cfg.exit_p, cfg.account, cfg.sizing) == (0.7, 0.6, "paper", "fixed_notional")
    with pytest.raises(ConfigError, match=r"STRATEGY_EXIT_P must be in \(0, STRATEGY_ENTER_P=0.6\], got 0.65"):
        StrategyConfig(exit_p=0.65)
    with pytest.raises(ConfigError, match=r"STRATEGY_ENTER_P must be in \(0.5, 1\), got 0.5"):
        StrategyConfig(enter_p=0.5)
    with pytest.raises(ConfigError, match="STRATEGY_SIZING must be fixed_notional or vol_target, got 'kelly'"):
        StrategyConfig(sizing="kelly")
    with pytest.raises(ConfigError, match="STRATEGY_NOTIONAL must be a positive number, got 0"):
        StrategyConfig(notional=0)


# --- properties -------------------------------------------------------------------------

bars = st.lists(st.tuples(st.floats(0, 1), st.integers(50, 150).map(float), st.booleans()),
                min_size=1, max_size=40)


def streams(raw):
    """Per-bar IndicatorSets and Predictions of two symbols (the model skips some bars)."""
    inds, preds = [], []
    for i, (p_up, close, scored) in enumerate(raw):
        for sym in ("AAPL", "MSFT"):
            inds.append(indicator_set(sym, T0 + i * MIN, close))
            if scored:
                preds.append(prediction(sym, T0 + i * MIN, p_up))
    return inds, preds


def in_order(cfg, inds, preds):
    st_ = Strategy(cfg)
    out = []
    by_ts = {}
    for ind in inds:
        by_ts.setdefault(ind["ts"], []).append(("i", ind))
    for pred in preds:
        by_ts.setdefault(pred["ts"], []).append(("p", pred))
    for ts in sorted(by_ts):
        for kind, ev in by_ts[ts]:
            out += on_indicator_set(st_, ev) if kind == "i" else on_prediction(st_, ev)
    return st_, out


@settings(max_examples=80, deadline=None)
@given(bars, st.data())
def test_signals_do_not_depend_on_how_the_inputs_interleave(raw, data):
    cfg = StrategyConfig(min_hold_bars=2)
    inds, preds = streams(raw)
    _, expected = in_order(cfg, inds, preds)
    # any merge of the two ordered streams
    picks = data.draw(st.permutations([0] * len(inds) + [1] * len(preds)))
    st_, out, queues = Strategy(cfg), [], [list(inds), list(preds)]
    for k in picks:
        ev = queues[k].pop(0)
        out += on_indicator_set(st_, ev) if k == 0 else on_prediction(st_, ev)
    key = lambda s: (s["ts"], s["symbol"])  # noqa: E731 (per-symbol order is what is fixed)
    assert sorted(out, key=key) == sorted(expected, key=key)
    assert st_.unmatched_predictions == 0
    # targets follow each other: every signal moves from the previous target to its own
    held = {}
    for s in sorted(out, key=key):
        delta = s["target_position"] - held.get(s["symbol"], 0.0)
        assert s["quantity"] == abs(delta) and s["side"] == ("BUY" if delta > 0 else "SELL")
        held[s["symbol"]] = s["target_position"]


@settings(max_examples=60, deadline=None)
@given(bars, st.data())
def test_restored_state_continues_identically(raw, data):
    cfg = StrategyConfig(min_hold_bars=3)
    inds, preds = streams(raw)
    events = [("i", e) for e in inds] + [("p", e) for e in preds]
    events.sort(key=lambda e: (e[1]["ts"], e[0]))
    cut = data.draw(st.integers(0, len(events)))

    def feed(st_, evs):
        return [s for kind, ev in evs
                for s in (on_indicator_set(st_, ev) if kind == "i" else on_prediction(st_, ev))]

    straight = Strategy(cfg)
    expected = feed(straight, events)
    first = Strategy(cfg)
    out = feed(first, events[:cut])
    restored = Strategy.from_dict(json.loads(json.dumps(first.to_dict())), cfg)
    out += feed(restored, events[cut:])
    assert out == expected
    assert restored.to_dict() == straight.to_dict()

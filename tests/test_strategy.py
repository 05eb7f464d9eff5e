"""Strategy: thresholds with hysteresis, minimum holding period, sizing; a decision needs
its prediction alone (Prediction v2 carries the scored bar's close and volatility_20)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticktape.api import strategy_config
from ticktape.config import ConfigError
from ticktape.config import settings as make_settings
from ticktape.core.strategy import Strategy, StrategyConfig, SymbolState, check_prediction, on_prediction
from trading_events import MIN, T0, assert_schema, prediction


def step(st_, i, p_up, close=100.0, vol=0.25, symbol="AAPL"):
    """One bar's Prediction (carrying its close and volatility_20); the signals emitted."""
    ts = T0 + i * MIN
    return on_prediction(st_, prediction(symbol, ts, p_up, close=close, volatility=vol))


def targets(cfg, p_ups, **kw):
    st_ = Strategy(cfg)
    return [[s["target_position"] for s in step(st_, i, p, **kw)] for i, p in enumerate(p_ups)]


def test_entry_signal_is_exact():
    st_ = Strategy(StrategyConfig(min_hold_bars=0))
    assert step(st_, 0, 0.59, close=123.0) == []
    [sig] = step(st_, 1, 0.61, close=123.0)
    assert sig == {
        "event_id": f"sig:paper:pred:AAPL:1m:{T0 + MIN}:xgb:3",
        "account": "paper",
        "symbol": "AAPL",
        "ts": T0 + MIN,
        "side": "BUY",
        "quantity": 81.0,
        "target_position": 81.0,
        "reference_price": 123.0,
        "strategy": "p_up_hysteresis",
        "reason": "p_up 0.6100 >= 0.6: flat -> long (fixed_notional 10000.00 @ 123)",
        "model_version": "3",
    }
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
    cfg = StrategyConfig(min_hold_bars=0, sizing="vol_target", notional=10_000.0, vol_target=0.2, max_vol_scale=3.0)
    # 10000 * 0.2/0.4 = 5000 notional at 50 -> 100 shares; vol 0.01 is capped at 3x -> 600
    assert targets(cfg, [0.7], close=50.0, vol=0.4) == [[100.0]]
    assert targets(cfg, [0.7], close=50.0, vol=0.01) == [[600.0]]
    assert targets(cfg, [0.7, 0.7], close=50.0, vol=None) == [[], []]
    # lots: 10000/30 = 333.3 -> 300 in lots of 100; an unaffordable lot is no entry
    assert targets(StrategyConfig(lot_size=100.0), [0.7], close=30.0) == [[300.0]]
    assert targets(StrategyConfig(), [0.7], close=20_000.0) == [[]]


def test_other_intervals_ignored_and_bad_probability_refused():
    st_ = Strategy(StrategyConfig())
    assert on_prediction(st_, prediction("AAPL", T0, 0.9, interval="1s")) == []
    assert st_.symbols == {}
    with pytest.raises(ValueError, match=r"prediction pred:AAPL:1m:\d+:xgb:3: p_up=1.5 is not a probability"):
        on_prediction(st_, prediction("AAPL", T0, 1.5))
    assert st_.symbols == {}  # refused before any state is touched


def v1(pred):
    """The same prediction as Prediction v1 had it: no close, no volatility_20."""
    return {k: v for k, v in pred.items() if k not in ("close", "volatility_20")}


def test_prediction_without_a_price_is_refused_naming_the_event():
    st_ = Strategy(StrategyConfig(min_hold_bars=0))
    pred = prediction("AAPL", T0, 0.9)
    for bad in (
        v1(pred),
        {**pred, "close": None},
        {**pred, "close": 0.0},
        {**pred, "close": -1.0},
        {**pred, "close": float("inf")},
        {**pred, "close": float("nan")},
    ):
        with pytest.raises(ValueError) as err:
            on_prediction(st_, bad)
        msg = str(err.value)
        assert msg.startswith(f"prediction {pred['event_id']}: close=") and "is not a price" in msg, msg
        with pytest.raises(ValueError, match="is not a price"):
            check_prediction(bad)
    with pytest.raises(
        ValueError,
        match=rf"prediction {pred['event_id']}: close=None is not a price "
        r"\(Prediction v1 carries none: re-run the predict stage\)",
    ):
        on_prediction(st_, v1(pred))
    assert st_.symbols == {}  # nothing decided, nothing remembered: the v2 prediction still counts
    check_prediction(pred)
    assert len(on_prediction(st_, pred)) == 1
    # volatility_20 is optional (null until the indicator has 20 bars): fixed sizing trades without it
    assert len(on_prediction(Strategy(StrategyConfig()), prediction("AAPL", T0, 0.9, volatility=None))) == 1


def test_redelivered_inputs_change_nothing():
    st_ = Strategy(StrategyConfig(min_hold_bars=0))
    pred = prediction("AAPL", T0, 0.9)
    assert len(on_prediction(st_, pred)) == 1
    before = st_.to_dict()
    assert on_prediction(st_, pred) == []
    assert on_prediction(st_, prediction("AAPL", T0 - MIN, 0.1)) == []  # older than the last: redelivered
    assert st_.to_dict() == before


def test_decision_uses_the_predictions_own_price_and_volatility():
    """Each bar's decision sizes at its own prediction's close and volatility_20."""
    cfg = StrategyConfig(min_hold_bars=0, sizing="vol_target", notional=10_000.0, vol_target=0.2)
    st_ = Strategy(cfg)
    [entry] = step(st_, 0, 0.9, close=50.0, vol=0.4)  # 10000 * 0.5 / 50
    [flip] = step(st_, 1, 0.1, close=25.0, vol=0.2)  # short 10000 * 1 / 25
    assert (entry["target_position"], entry["reference_price"]) == (100.0, 50.0)
    assert (flip["target_position"], flip["quantity"], flip["reference_price"]) == (-400.0, 500.0, 25.0)


def test_state_saved_with_join_buffers_loads():
    """A state saved before Prediction v2 (with the join's buffers) restores its decisions."""
    old = {
        "symbols": {
            "AAPL": {
                "direction": 1,
                "target": 100.0,
                "decisions": 7,
                "changed_at": 6,
                "last_pred_ts": T0,
                "last_ind_ts": T0 + MIN,
                "preds": [],
                "inds": [[T0 + MIN, 101.0, 0.2]],
            }
        },
        "unmatched_predictions": 3,
    }
    st_ = Strategy.from_dict(old, StrategyConfig(min_hold_bars=0))
    assert st_.to_dict() == {
        "symbols": {"AAPL": {"direction": 1, "target": 100.0, "decisions": 7, "changed_at": 6, "last_pred_ts": T0}}
    }
    assert isinstance(st_.symbols["AAPL"], SymbolState)
    assert on_prediction(st_, prediction("AAPL", T0, 0.1)) == []  # already decided
    [exit_] = on_prediction(st_, prediction("AAPL", T0 + MIN, 0.5))
    assert (exit_["side"], exit_["quantity"], exit_["target_position"]) == ("SELL", 100.0, 0.0)


def test_config_from_settings_and_validation():
    cfg = strategy_config(make_settings(strategy_enter_p=0.7, strategy_exit_p=0.6, strategy_sizing="VOL_TARGET"))
    assert (cfg.enter_p, cfg.exit_p, cfg.account, cfg.sizing) == (0.7, 0.6, "paper", "vol_target")
    # the settings name the variable ...
    with pytest.raises(ConfigError, match=r"^STRATEGY_EXIT_P=0.65: must be at most STRATEGY_ENTER_P=0.6$"):
        make_settings(strategy_exit_p=0.65)
    with pytest.raises(ConfigError, match=r"^STRATEGY_ENTER_P=0.5: must be more than 0.5$"):
        make_settings(strategy_enter_p=0.5)
    with pytest.raises(ConfigError, match=r"^STRATEGY_SIZING='kelly': must be one of FIXED_NOTIONAL, VOL_TARGET$"):
        make_settings(strategy_sizing="kelly")
    with pytest.raises(ConfigError, match=r"^STRATEGY_NOTIONAL=0: must be more than 0$"):
        make_settings(strategy_notional=0)
    # ... and the core's config, built in code, its own fields
    with pytest.raises(ConfigError, match=r"exit_p must be in \(0, enter_p=0.6\], got 0.65"):
        StrategyConfig(exit_p=0.65)
    with pytest.raises(ConfigError, match=r"enter_p must be in \(0.5, 1\), got 0.5"):
        StrategyConfig(enter_p=0.5)
    with pytest.raises(ConfigError, match="sizing must be fixed_notional or vol_target, got 'kelly'"):
        StrategyConfig(sizing="kelly")
    with pytest.raises(ConfigError, match="notional must be a positive number, got 0"):
        StrategyConfig(notional=0)


# --- properties -------------------------------------------------------------------------

bars = st.lists(
    st.tuples(st.floats(0, 1), st.integers(50, 150).map(float), st.booleans(), st.sampled_from([None, 0.05, 0.2, 0.6])),
    min_size=1,
    max_size=40,
)


def streams(raw):
    """Per-symbol Prediction streams of two symbols, each in ts order (the model skips some bars)."""
    out = {"AAPL": [], "MSFT": []}
    for i, (p_up, close, scored, vol) in enumerate(raw):
        for k, sym in enumerate(out):
            if scored:
                out[sym].append(prediction(sym, T0 + i * MIN, p_up, close=close + k, volatility=vol))
    return out


def in_order(cfg, preds):
    st_ = Strategy(cfg)
    merged = sorted((p for ps in preds.values() for p in ps), key=lambda p: (p["ts"], p["symbol"]))
    return st_, [s for p in merged for s in on_prediction(st_, p)]


def per_symbol(signals):
    out = {}
    for s in signals:
        out.setdefault(s["symbol"], []).append(s)
    return out


@settings(max_examples=80, deadline=None)
@given(bars, st.data())
def test_signals_do_not_depend_on_how_the_inputs_interleave(raw, data):
    cfg = StrategyConfig(min_hold_bars=2, sizing="vol_target")
    preds = streams(raw)
    _, expected = in_order(cfg, preds)
    # any merge of the two ordered streams
    picks = data.draw(st.permutations([0] * len(preds["AAPL"]) + [1] * len(preds["MSFT"])))
    st_, out, queues = Strategy(cfg), [], [list(preds["AAPL"]), list(preds["MSFT"])]
    for k in picks:
        out += on_prediction(st_, queues[k].pop(0))
    assert per_symbol(out) == per_symbol(expected)  # the same signals, in the same order per symbol
    # targets follow each other: every signal moves from the previous target to its own
    for sigs in per_symbol(out).values():
        held = 0.0
        for s in sigs:
            delta = s["target_position"] - held
            assert s["quantity"] == abs(delta) and s["side"] == ("BUY" if delta > 0 else "SELL")
            held = s["target_position"]


@settings(max_examples=60, deadline=None)
@given(bars, st.data())
def test_restored_state_continues_identically(raw, data):
    cfg = StrategyConfig(min_hold_bars=3)
    preds = streams(raw)
    events = sorted((p for ps in preds.values() for p in ps), key=lambda p: (p["ts"], p["symbol"]))
    cut = data.draw(st.integers(0, len(events)))

    def feed(st_, evs):
        return [s for ev in evs for s in on_prediction(st_, ev)]

    straight = Strategy(cfg)
    expected = feed(straight, events)
    first = Strategy(cfg)
    out = feed(first, events[:cut])
    restored = Strategy.from_dict(json.loads(json.dumps(first.to_dict())), cfg)
    out += feed(restored, events[max(0, cut - 3) :])  # a restart redelivers the last few
    assert out == expected
    assert restored.to_dict() == straight.to_dict()

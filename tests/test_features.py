"""Features and labels: exact definitions, no look-ahead, the walk-forward split's gap,
the same vector in training (batch over history) and live (bar by bar), state round trip."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from ticktape.core.features import (
    FEATURE_NAMES,
    Bars,
    FeatureError,
    FeatureState,
    build_dataset,
    direction_labels,
    walk_forward_split,
)
from ticktape.core.indicators import INDICATOR_NAMES, IndicatorState, indicator_event
from ticktape.core.simbars import simulated_bars

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00Z
MINUTE = 60_000_000
F = {name: i for i, name in enumerate(FEATURE_NAMES)}


@pytest.fixture(scope="module")
def sim():
    """~330 one-minute bars of each of 3 symbols from the seeded simulator."""
    return simulated_bars(["AAA", "BBB", "CCC"], seed=7, start_us=T0, minutes=330, tick_rate=3.0)


def _perturbed(bars, after_ts, seed):
    """Bars whose window ends after ``after_ts`` get new random prices and volumes."""
    rng = random.Random(seed)
    out = []
    for b in bars:
        if b["window_end"] > after_ts:
            c = b["close"] * rng.uniform(0.9, 1.1)
            b = b | {"open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "vwap": c, "volume": rng.uniform(1, 1e5)}
        out.append(b)
    return out


def _rows(ds, ts):
    return np.flatnonzero(ds.ts <= ts)


def test_features_of_a_bar_do_not_change_when_later_bars_do(sim):
    base = build_dataset(Bars.from_events(sim), "1m", 5)
    times = sorted({b["window_end"] for b in sim})
    for cut in (times[40], times[210], times[300]):
        other = build_dataset(Bars.from_events(_perturbed(sim, cut, cut)), "1m", 5)
        known = _rows(base, cut)
        assert np.array_equal(base.X[known], other.X[known], equal_nan=True)  # bit for bit
        later = np.flatnonzero(base.ts > cut)
        assert not np.array_equal(base.X[later], other.X[later], equal_nan=True)  # the change shows after


def test_live_path_gives_the_training_vectors_bit_for_bit(sim):
    ds = build_dataset(Bars.from_events(sim), "1m", 5)
    want = {(s, int(t)): row for s, t, row in zip(ds.symbols, ds.ts, ds.X)}
    inds, feats = {}, {}
    for bar in sim:  # close order, symbols interleaved: as the pipeline sees them
        ind_state = inds.setdefault(bar["symbol"], IndicatorState("1m"))
        ind = indicator_event(bar, ind_state.update(bar))
        vec = feats.setdefault(bar["symbol"], FeatureState()).update(ind)
        assert np.array_equal(np.array(vec), want[(bar["symbol"], bar["window_end"])], equal_nan=True)
    assert len(want) == len(sim)


def test_lookback_of_each_feature(sim):
    bars = [b for b in sim if b["symbol"] == "AAA"]
    ds = build_dataset(Bars.from_events(bars), "1m", 5)
    missing = np.isnan(ds.X).sum(axis=0)
    lookback = {
        "sma_10_rel": 9,
        "sma_20_rel": 19,
        "sma_50_rel": 49,
        "sma_200_rel": 199,
        "ema_12_rel": 11,
        "ema_26_rel": 25,
        "rsi_5": 5,
        "rsi_14": 14,
        "macd_rel": 33,
        "macd_signal_rel": 33,
        "macd_hist_rel": 33,
        "bb_width": 19,
        "bb_pos": 19,
        "atr_14_rel": 14,
        "volatility_20": 20,
        "momentum_5_rel": 5,
        "momentum_20_rel": 20,
        "vwap_rel": 0,
        "obv_flow_20": 20,
        "ret_1": 1,
        "ret_5": 5,
        "ret_20": 20,
        "volume_z_20": 19,
    }
    assert dict(zip(FEATURE_NAMES, missing.tolist())) == lookback
    assert not np.isnan(ds.X[199:]).any()  # complete from bar 200 on


def _ind(ts, close, volume, obv=None, **values):
    ind = {
        "event_id": f"X:1m:{ts}",
        "symbol": "X",
        "interval": "1m",
        "ts": ts,
        "close": close,
        "volume": volume,
    } | dict.fromkeys(INDICATOR_NAMES)
    ind["obv"] = obv
    return ind | values


def test_exact_definitions():
    st = FeatureState()
    closes = [100.0 + i for i in range(21)]
    volumes = [100.0 * (i % 3 + 1) for i in range(21)]
    obv = 0.0
    for i, (c, v) in enumerate(zip(closes, volumes)):
        obv += v if i else 0.0
        vec = st.update(_ind(i * MINUTE, c, v, obv=obv))
    assert vec[F["ret_1"]] == math.log(120.0 / 119.0)
    assert vec[F["ret_5"]] == math.log(120.0 / 115.0)
    assert vec[F["ret_20"]] == math.log(120.0 / 100.0)
    window = volumes[1:]
    mean = sum(window) / 20
    std = math.sqrt(sum((x - mean) ** 2 for x in window) / 20)
    assert vec[F["volume_z_20"]] == pytest.approx((volumes[-1] - mean) / std, rel=1e-12)
    assert vec[F["obv_flow_20"]] == pytest.approx(1.0, rel=1e-12)  # 20 up bars: all volume was buying
    assert math.isnan(vec[F["sma_10_rel"]])  # null indicators stay missing

    vec = st.update(
        _ind(
            21 * MINUTE,
            110.0,
            300.0,
            obv=obv - 300.0,
            sma_10=99.0,
            rsi_14=40.0,
            macd=0.55,
            bb_upper=112.0,
            bb_middle=110.0,
            bb_lower=108.0,
            atr_14=2.2,
            vwap=121.0,
        )
    )
    assert vec[F["sma_10_rel"]] == 99.0 / 110.0 - 1.0
    assert vec[F["rsi_14"]] == 40.0
    assert vec[F["macd_rel"]] == 0.55 / 110.0
    assert vec[F["bb_width"]] == 4.0 / 110.0
    assert vec[F["bb_pos"]] == 0.5
    assert vec[F["atr_14_rel"]] == 2.2 / 110.0
    assert vec[F["vwap_rel"]] == 121.0 / 110.0 - 1.0
    assert vec[F["ret_1"]] == math.log(110.0 / 120.0)

    flat = FeatureState()
    for i in range(20):  # equal volumes and a flat band: defined values, not noise over zero
        vec = flat.update(_ind(i * MINUTE, 0.1, 0.1, obv=0.1, bb_upper=0.1, bb_middle=0.1, bb_lower=0.1))
    assert vec[F["volume_z_20"]] == 0.0 and vec[F["bb_pos"]] == 0.5


def test_redelivery_and_bad_input_leave_the_state_alone():
    st = FeatureState()
    st.update(_ind(MINUTE, 10.0, 5.0))
    before = st.to_state()
    assert st.update(_ind(MINUTE, 11.0, 5.0)) is None  # same ts again
    for bad in ({"close": 0.0}, {"close": math.nan}, {"volume": -1.0}, {"volume": math.inf}):
        with pytest.raises(FeatureError):
            st.update(_ind(2 * MINUTE, 10.0, 5.0) | bad)
    assert st.to_state() == before


def test_state_round_trip_continues_bit_for_bit(sim):
    bars = [b for b in sim if b["symbol"] == "BBB"]
    inds = []
    ind_state = IndicatorState("1m")
    for bar in bars:
        inds.append(indicator_event(bar, ind_state.update(bar)))
    straight = FeatureState()
    want = [straight.update(i) for i in inds]
    for cut in (0, 7, 150, len(inds) - 1):
        st = FeatureState()
        for ind in inds[:cut]:
            st.update(ind)
        st = FeatureState.from_state(json.loads(json.dumps(st.to_state())))
        got = [st.update(i) for i in inds[cut:]]
        assert np.array_equal(np.array(got), np.array(want[cut:]), equal_nan=True)


def test_label_uses_only_the_next_horizon_bars():
    closes = [10.0, 11.0, 9.0, 12.0, 12.0, 8.0, 13.0]
    ts = [100 * (i + 1) for i in range(7)]
    labels, ends = direction_labels(closes, ts, 2)
    assert labels[:5] == [0.0, 1.0, 1.0, 0.0, 1.0] and all(math.isnan(x) for x in labels[5:])
    assert ends == [300, 400, 500, 600, 700, -1, -1]
    for t in range(5):
        for j in range(len(closes)):
            if t < j <= t + 2:
                continue
            changed = closes.copy()
            changed[j] = 1000.0 if j != t else closes[t]  # any bar outside t+1..t+2 (t itself aside)
            assert direction_labels(changed, ts, 2)[0][t] == labels[t]
        moved = closes.copy()
        moved[t + 2] = closes[t] + (-1.0 if labels[t] else 1.0)  # bar t+horizon decides it
        assert direction_labels(moved, ts, 2)[0][t] == 1.0 - labels[t]
    equal = direction_labels([5.0, 6.0, 5.0], [1, 2, 3], 2)[0]
    assert equal[0] == 0.0  # no rise is not "up"


def test_dataset_labels_match_each_symbols_own_bars(sim):
    ds = build_dataset(Bars.from_events(sim), "1m", 3)
    by_symbol = {}
    for b in sim:
        by_symbol.setdefault(b["symbol"], []).append(b)
    for sym, bars in by_symbol.items():
        rows = [i for i, s in enumerate(ds.symbols) if s == sym]
        assert ds.ts[rows].tolist() == [b["window_end"] for b in bars]
        for k, r in enumerate(rows):
            if k + 3 < len(bars):
                assert ds.y[r] == (1.0 if bars[k + 3]["close"] > bars[k]["close"] else 0.0)
                assert ds.label_end[r] == bars[k + 3]["window_end"]
            else:
                assert math.isnan(ds.y[r]) and ds.label_end[r] == -1


def test_holdout_starts_after_the_last_training_label_ends(sim):
    ds = build_dataset(Bars.from_events(sim), "1m", 5)
    usable = ~np.isnan(ds.X).any(axis=1) & ~np.isnan(ds.y)
    split = walk_forward_split(ds.ts, ds.label_end, usable, 0.25)
    assert ds.label_end[split.train].max() <= ds.ts[split.holdout].min() == split.holdout_start
    assert ds.ts[split.train].max() < split.holdout_start
    assert np.all(np.diff(ds.ts[split.train]) >= 0) and np.all(np.diff(ds.ts[split.holdout]) >= 0)
    assert not set(split.train) & set(split.holdout)
    before = [r for r in np.flatnonzero(usable) if ds.ts[r] < split.holdout_start]
    purged = [r for r in before if ds.label_end[r] > split.holdout_start]
    assert split.purged == len(purged) > 0  # the rows whose labels straddle the cut are gone
    assert len(split.train) + split.purged + len(split.holdout) == usable.sum()
    assert len(split.holdout) == pytest.approx(0.25 * usable.sum(), abs=3)


def test_split_by_hand():
    ts = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    label_end = np.array([3, 4, 5, 6, 7, 8, -1, -1])
    usable = np.array([True] * 6 + [False] * 2)
    split = walk_forward_split(ts, label_end, usable, 0.3)  # 6 usable: int(4.2) = 4 → T = ts[4] = 5
    assert split.holdout.tolist() == [4, 5] and split.holdout_start == 5
    assert split.train.tolist() == [0, 1, 2] and split.purged == 1  # the row at 4 learns its label at 6
    with pytest.raises(ValueError):
        walk_forward_split(ts, label_end, usable, 1.0)

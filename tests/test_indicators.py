"""The indicator engine against TA-Lib, its state round trip, and `ticktape indicators`."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import talib

from ticktape.cli import main
from ticktape.core.indicators import (
    INDICATOR_NAMES,
    BarError,
    IndicatorState,
    compute_batch,
    indicator_event,
)
from ticktape.core.intervals import bars_per_year, interval_seconds
from ticktape.serde import Serde

MINUTE = 60_000_000
N = 2500
# Columns in price units (their tolerance floor scales with the price level).
PRICE_COLUMNS = {
    "sma_10",
    "sma_20",
    "sma_50",
    "sma_200",
    "ema_12",
    "ema_26",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "atr_14",
    "momentum_5",
    "momentum_20",
    "vwap",
}


def make_series(kind: str, n: int = N, seed: int = 7) -> dict:
    """OHLCV + window starts (micros) of one symbol, 1-minute bars."""
    rng = np.random.default_rng(seed)
    level = {"huge": 1e6, "tiny": 1e-4, "near_flat_huge": 1e6}.get(kind, 100.0)
    steps = rng.normal(0.0, 0.01, n)
    if kind == "trend_up":
        steps += 0.002
    elif kind == "trend_down":
        steps -= 0.002
    elif kind == "near_flat_huge":
        steps *= 1e-7  # relative moves of ~1e-9: a variance by cancellation would be noise
    close = level * np.exp(np.cumsum(steps))
    if kind == "flat":
        close = np.full(n, 123.456789)  # squares not representable: exercises rounding
    spread = close * rng.uniform(0.0, 0.01, n) * (kind != "flat")
    high = close + spread * rng.uniform(0.0, 1.0, n)
    low = close - spread * rng.uniform(0.0, 1.0, n)
    volume = rng.uniform(0.0, 1000.0, n).round(3)
    step_us = np.full(n, MINUTE)
    if kind == "gaps":
        # Hours-to-days holes (several UTC days, so VWAP sessions reset mid-series).
        holes = rng.random(n) < 0.02
        step_us[holes] = rng.integers(60, 4 * 1440, holes.sum()) * MINUTE
    if kind == "zero_volume":
        volume[rng.random(n) < 0.3] = 0.0
        volume[:50] = 0.0  # a session opening with no volume: VWAP null
    start = 1_704_067_200_000_000 + 23 * 60 * MINUTE  # 2024-01-01T23:00Z
    window_start = start + np.concatenate([[0], np.cumsum(step_us[1:])])
    return {"high": high, "low": low, "close": close, "volume": volume, "window_start": window_start}


KINDS = ("walk", "trend_up", "trend_down", "flat", "gaps", "huge", "tiny", "near_flat_huge", "zero_volume")


def bars_of(s: dict, symbol: str = "X", interval: str = "1m", vwap=None):
    for i in range(len(s["close"])):
        ws = int(s["window_start"][i])
        yield {
            "symbol": symbol,
            "interval": interval,
            "ts": ws + MINUTE,
            "window_start": ws,
            "window_end": ws + MINUTE,
            "open": float(s["close"][i - 1] if i else s["close"][0]),
            "high": float(s["high"][i]),
            "low": float(s["low"][i]),
            "close": float(s["close"][i]),
            "volume": float(s["volume"][i]),
            "vwap": vwap,
            "trade_count": 1,
        }


def run_state(s: dict) -> dict[str, np.ndarray]:
    state = IndicatorState("1m")
    rows = [state.update(bar) for bar in bars_of(s)]
    return {k: np.array([np.nan if r[k] is None else r[k] for r in rows]) for k in INDICATOR_NAMES}


def reference(s: dict) -> dict[str, np.ndarray]:
    """TA-Lib for what it defines; the documented formulas for volatility_20 and vwap."""
    h, lo, c, v = s["high"], s["low"], s["close"], s["volume"]
    ref = {f"sma_{n}": talib.SMA(c, n) for n in (10, 20, 50, 200)}
    ref |= {f"ema_{n}": talib.EMA(c, n) for n in (12, 26)}
    ref |= {f"rsi_{n}": talib.RSI(c, n) for n in (5, 14)}
    ref["macd"], ref["macd_signal"], ref["macd_hist"] = talib.MACD(c, 12, 26, 9)
    ref["bb_upper"], ref["bb_middle"], ref["bb_lower"] = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    ref["atr_14"] = talib.ATR(h, lo, c, 14)
    ref["momentum_5"], ref["momentum_20"] = talib.MOM(c, 5), talib.MOM(c, 20)
    ref["obv"] = talib.OBV(c, v)
    log_returns = np.log(c[1:] / c[:-1])
    vol = np.full(len(c), np.nan)
    vol[20:] = np.lib.stride_tricks.sliding_window_view(log_returns, 20).std(axis=1, ddof=1)
    ref["volatility_20"] = vol * math.sqrt(365 * 24 * 60)
    frame = pd.DataFrame({"day": s["window_start"] // 86_400_000_000, "pv": (h + lo + c) / 3 * v, "v": v})
    cum = frame.groupby("day")[["pv", "v"]].cumsum()
    ref["vwap"] = np.where(cum["v"] > 0, cum["pv"] / cum["v"].where(cum["v"] > 0, 1.0), np.nan)
    return ref


def assert_matches(got: np.ndarray, ref: np.ndarray, unit: float, what: str):
    """Nulls exactly where the reference has NaN; values within 1e-9 relative, with a
    floor of 1e-13 of the column's unit for values that cross zero (macd_hist, momentum)."""
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{what}: null positions differ"
    ok = ~np.isnan(ref)
    err = np.abs(got[ok] - ref[ok])
    bad = err > 1e-9 * np.abs(ref[ok]) + 1e-13 * unit
    assert not bad.any(), (
        f"{what}: {bad.sum()} values off, worst {err.max():.3g} (ours {got[ok][bad][:3]}, ref {ref[ok][bad][:3]})"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_every_column_matches_reference(kind):
    s = make_series(kind)
    got, ref = run_state(s), reference(s)
    assert set(ref) == set(INDICATOR_NAMES)
    units = {"rsi_5": 100.0, "rsi_14": 100.0, "volatility_20": 1.0, "obv": s["volume"].sum()}
    for name in INDICATOR_NAMES:
        unit = float(np.median(s["close"])) if name in PRICE_COLUMNS else units[name]
        assert_matches(got[name], ref[name], unit, f"{kind}/{name}")
    # Lookbacks as TA-Lib defines them: the first value of each column, bar numbers 1-based.
    first = {name: int(np.argmax(~np.isnan(got[name]))) + 1 for name in INDICATOR_NAMES}
    assert first | {"vwap": 1} == {
        "sma_10": 10,
        "sma_20": 20,
        "sma_50": 50,
        "sma_200": 200,
        "ema_12": 12,
        "ema_26": 26,
        "rsi_5": 6,
        "rsi_14": 15,
        "macd": 34,
        "macd_signal": 34,
        "macd_hist": 34,
        "bb_upper": 20,
        "bb_middle": 20,
        "bb_lower": 20,
        "atr_14": 15,
        "volatility_20": 21,
        "momentum_5": 6,
        "momentum_20": 21,
        "vwap": 1,
        "obv": 1,
    }


def test_macd_is_seeded_like_talib_not_like_two_plain_emas():
    s = make_series("walk")
    got = run_state(s)
    plain = talib.EMA(s["close"], 12) - talib.EMA(s["close"], 26)
    # A fast EMA seeded on bars 1-12 differs at bar 34 by far more than the 1e-9 tolerance.
    assert abs(got["macd"][33] - plain[33]) > 1e-6 * abs(plain[33])
    assert got["macd"][33] == pytest.approx(talib.MACD(s["close"], 12, 26, 9)[0][33], rel=1e-12)


def test_flat_prices_give_zero_spread_indicators():
    got = run_state(make_series("flat"))
    assert np.all(got["momentum_20"][20:] == 0.0) and np.all(got["volatility_20"][20:] == 0.0)
    assert np.all(got["rsi_14"][14:] == 0.0)  # no movement: TA-Lib says 0
    assert np.all(got["atr_14"][14:] == 0.0)
    assert np.allclose(got["bb_upper"][19:], 123.456789, rtol=1e-15, atol=0)


def test_zero_volume_leaves_vwap_null_until_volume_and_obv_unchanged():
    s = make_series("zero_volume")
    got = run_state(s)
    first = 50 + int(np.argmax(s["volume"][50:] > 0))  # first bar with volume in the session
    assert np.all(np.isnan(got["vwap"][:first])) and got["vwap"][first] == pytest.approx(
        (s["high"][first] + s["low"][first] + s["close"][first]) / 3, rel=1e-15
    )
    assert np.all(got["obv"][:50] == 0.0)
    zero = np.flatnonzero(s["volume"][1:] == 0.0) + 1
    assert np.array_equal(got["obv"][zero], got["obv"][zero - 1])


def test_vwap_uses_the_bars_own_vwap_and_resets_each_utc_day():
    state = IndicatorState("1h")
    day = 86_400_000_000
    hour = 3_600_000_000

    def bar(ws, vwap, volume):
        return {
            "symbol": "X",
            "interval": "1h",
            "ts": ws + hour,
            "window_start": ws,
            "window_end": ws + hour,
            "open": 10.0,
            "high": 12.0,
            "low": 8.0,
            "close": 11.0,
            "volume": volume,
            "vwap": vwap,
            "trade_count": 2,
        }

    assert state.update(bar(day - 2 * hour, 10.5, 3.0))["vwap"] == 10.5
    assert state.update(bar(day - hour, 11.5, 1.0))["vwap"] == (10.5 * 3 + 11.5) / 4
    assert state.update(bar(day, 9.0, 2.0))["vwap"] == 9.0  # new UTC day, new session
    hours = IndicatorState("1h", session_seconds=3600)
    assert hours.update(bar(0, 10.0, 1.0))["vwap"] == 10.0
    assert hours.update(bar(hour, 12.0, 1.0))["vwap"] == 12.0


def test_volatility_annualization_follows_the_interval():
    s = make_series("walk", n=60)
    daily = IndicatorState("1d")
    minute = IndicatorState("1m")
    for bar in bars_of(s):
        d = daily.update(bar | {"interval": "1d"})
        m = minute.update(bar)
    assert m["volatility_20"] / d["volatility_20"] == pytest.approx(math.sqrt(1440), rel=1e-14)
    assert bars_per_year(interval_seconds("1d")) == 365.0


def test_batch_is_bit_identical_to_per_symbol_updates():
    series = {
        f"S{j}": make_series(kind, n=n, seed=j)
        for j, (kind, n) in enumerate(
            [("walk", 700), ("gaps", 450), ("tiny", 260), ("trend_up", 30), ("huge", 1), ("zero_volume", 333)]
        )
    }
    rows = sorted(
        ((int(t), sym, i) for sym, s in series.items() for i, t in enumerate(s["window_start"])), key=lambda r: r[0]
    )  # interleaved by time, like a CSV
    col = {k: [series[sym][k][i] for _, sym, i in rows] for k in ("high", "low", "close", "volume")}
    symbols = [sym for _, sym, _ in rows]
    batch = compute_batch(
        symbols,
        [t for t, _, _ in rows],
        col["close"],
        col["high"],
        col["low"],
        col["close"],
        col["volume"],
        {sym: 60 for sym in series},
    )
    for sym, s in series.items():
        mine = np.column_stack([run_state(s)[k] for k in INDICATOR_NAMES])
        theirs = batch[[j for j, (_, r_sym, _) in enumerate(rows) if r_sym == sym]]
        assert mine.tobytes() == theirs.tobytes(), sym


def test_batch_rejects_bad_rows_by_index():
    ones = [1.0, 1.0, 1.0]
    with pytest.raises(BarError, match="out of time order") as e:
        compute_batch(["A", "B", "A"], [5, 1, 5], ones, ones, ones, ones, ones, {})
    assert e.value.row == 2
    with pytest.raises(BarError, match="low must be a finite positive number, got inf") as e:
        compute_batch(["A", "B", "A"], [1, 1, 2], ones, ones, [1.0, math.inf, 1.0], ones, ones, {})
    assert e.value.row == 1
    with pytest.raises(BarError, match="volume must be a finite number >= 0"):
        compute_batch(["A"], [1], [1.0], [1.0], [1.0], [1.0], [-1.0], {})


@pytest.mark.parametrize("cut", [1, 12, 19, 25, 33, 199, 200, 1234])
def test_state_round_trip_resumes_bit_for_bit(cut):
    s = make_series("gaps", n=1500)
    bars = list(bars_of(s))
    straight = IndicatorState("1m")
    expected = [indicator_event(b, straight.update(b)) for b in bars]

    first = IndicatorState("1m")
    events = [indicator_event(b, first.update(b)) for b in bars[:cut]]
    saved = json.dumps(first.to_state())  # as a changelog would keep it
    resumed = IndicatorState.from_state(json.loads(saved))
    assert resumed.update(bars[cut - 1]) is None  # the last bar redelivered: ignored
    events += [indicator_event(b, resumed.update(b)) for b in bars[cut:]]
    assert json.dumps(events) == json.dumps(expected)
    assert json.dumps(resumed.to_state()) == json.dumps(straight.to_state())


def test_redelivered_and_older_bars_are_ignored_without_touching_state():
    bars = list(bars_of(make_series("walk", n=40)))
    state = IndicatorState("1m")
    for bar in bars[:30]:
        state.update(bar)
    before = state.to_state()
    assert state.update(bars[29]) is None and state.update(bars[3]) is None
    assert state.to_state() == before and state.count == 30


def test_bad_bars_are_rejected_before_touching_state():
    bar = next(bars_of(make_series("walk", n=1)))
    state = IndicatorState("1m")
    for bad in ({"close": math.nan}, {"high": -1.0}, {"volume": math.inf}, {"vwap": 0.0}):
        with pytest.raises(BarError):
            state.update(bar | bad)
    with pytest.raises(BarError, match="interval"):
        state.update(bar | {"interval": "1s"})
    assert state.count == 0 and state.last_window_start is None


def test_from_state_rejects_foreign_states():
    good = IndicatorState("5m").to_state()
    with pytest.raises(ValueError, match="version"):
        IndicatorState.from_state(good | {"version": 99})
    with pytest.raises(ValueError, match="closes"):
        IndicatorState.from_state(good | {"closes": [0.0] * 3})


def test_indicator_event_fits_the_schema():
    s = make_series("walk", n=40)
    state = IndicatorState("1m")
    bars = list(bars_of(s))
    for bar in bars:
        values = state.update(bar)
    event = indicator_event(bars[-1], values)
    assert event["event_id"] == f"X:1m:{bars[-1]['window_start']}"
    assert event["ts"] == bars[-1]["window_end"]
    assert event["sma_200"] is None and event["sma_20"] is not None
    serde = Serde()
    assert serde.decode(serde.encode("indicator_set", event)) == ("indicator_set", event)


@pytest.mark.parametrize("text,seconds", [("1s", 1), ("1m", 60), ("5m", 300), ("1h", 3600), ("1d", 86400)])
def test_interval_seconds(text, seconds):
    assert interval_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "0m", "1w", "m", "1.5m", " 1m", None])
def test_interval_seconds_rejects(text):
    with pytest.raises(ValueError, match="bad interval"):
        interval_seconds(text)


# --- the command line -------------------------------------------------------------

GOLDEN_IN = """\
time,symbol,open,high,low,close,volume,src
2024-01-01T23:54:00Z,A,10,11,9,10,100,x
2024-01-01T23:55:00Z,A,10,12,10,11,200,x
2024-01-01T23:55:00Z,B,20,21,19,20,0,y
2024-01-01T23:56:00Z,A,11,13,11,12,100,x
2024-01-01T23:56:00Z,B,20,22,20,21,50,y
2024-01-01T23:57:00Z,A,12,12,10,11,100,x
2024-01-01T23:57:00Z,B,21,21,19,20,50,y
2024-01-01T23:58:00Z,A,11,14,12,13,300,x
2024-01-01T23:58:00Z,B,20,21,19,20,100,y
2024-01-01T23:59:00Z,A,13,15,13,14,100,x
2024-01-01T23:59:00Z,B,20,22,20,21,100,y
2024-01-02T00:00:00Z,A,14,16,14,15,200,x
2024-01-02T00:00:00Z,B,21,23,21,22,100,y
2024-01-02T00:01:00Z,B,22,24,22,23,0,y
"""
# Hand-checkable: typical price = close here, so A's VWAP is 10, 3200/300, 11, 11, 11.75, 12,
# then 15 after midnight (new session); B has no volume on its first bar (VWAP null).
# RSI 5 of A at its 6th bar: gains 5/5, losses 1/5 -> 100*(1/1.2).
EMPTY = "," * 17
GOLDEN_OUT = f"""\
time,symbol,open,high,low,close,volume,src,{",".join(INDICATOR_NAMES)}
2024-01-01T23:54:00Z,A,10,11,9,10,100,x,{EMPTY},10.0,100.0
2024-01-01T23:55:00Z,A,10,12,10,11,200,x,{EMPTY},10.666666666666666,300.0
2024-01-01T23:55:00Z,B,20,21,19,20,0,y,{EMPTY},,0.0
2024-01-01T23:56:00Z,A,11,13,11,12,100,x,{EMPTY},11.0,400.0
2024-01-01T23:56:00Z,B,20,22,20,21,50,y,{EMPTY},21.0,50.0
2024-01-01T23:57:00Z,A,12,12,10,11,100,x,{EMPTY},11.0,300.0
2024-01-01T23:57:00Z,B,21,21,19,20,50,y,{EMPTY},20.5,0.0
2024-01-01T23:58:00Z,A,11,14,12,13,300,x,{EMPTY},11.75,600.0
2024-01-01T23:58:00Z,B,20,21,19,20,100,y,{EMPTY},20.25,0.0
2024-01-01T23:59:00Z,A,13,15,13,14,100,x,,,,,,,83.33333333333334,,,,,,,,,,4.0,,12.0,700.0
2024-01-01T23:59:00Z,B,20,22,20,21,100,y,{EMPTY},20.5,100.0
2024-01-02T00:00:00Z,A,14,16,14,15,200,x,,,,,,,86.20689655172414,,,,,,,,,,4.0,,15.0,900.0
2024-01-02T00:00:00Z,B,21,23,21,22,100,y,,,,,,,74.99999999999999,,,,,,,,,,2.0,,22.0,200.0
2024-01-02T00:01:00Z,B,22,24,22,23,0,y,,,,,,,80.95238095238095,,,,,,,,,,2.0,,22.0,200.0
"""


def cli(tmp_path, text: str, *extra: str):
    src, dst = tmp_path / "bars.csv", tmp_path / "indicators.csv"
    src.write_text(text)
    return main(["indicators", "--input", str(src), "--output", str(dst), *extra]), dst


def test_cli_exact_output_for_two_interleaved_symbols(tmp_path):
    rc, out = cli(tmp_path, GOLDEN_IN)
    assert rc == 0
    assert out.read_text() == GOLDEN_OUT
    frame = pd.read_csv(out)
    for sym in ("A", "B"):  # the few filled TA-Lib columns agree with TA-Lib too
        rows = frame[frame.symbol == sym]
        c, v = rows.close.to_numpy(float), rows.volume.to_numpy(float)
        assert_matches(rows.rsi_5.to_numpy(), talib.RSI(c, 5), 100.0, sym)
        assert_matches(rows.momentum_5.to_numpy(), talib.MOM(c, 5), 10.0, sym)
        assert_matches(rows.obv.to_numpy(), talib.OBV(c, v), 100.0, sym)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.csv", "indicators.csv"]  # no temp left


def test_cli_runs_the_same_engine_as_the_stream_state(tmp_path):
    series = {"AAA": make_series("walk", n=300, seed=1), "BBB": make_series("gaps", n=250, seed=2)}
    rows = sorted((int(t), sym, i) for sym, s in series.items() for i, t in enumerate(s["window_start"]))
    lines = ["time,symbol,open,high,low,close,volume"]
    for t, sym, i in rows:
        s = series[sym]
        stamp = pd.Timestamp(t, unit="us", tz="UTC").isoformat()
        cells = (float(s[k][i]) for k in ("close", "high", "low", "close", "volume"))
        lines.append(",".join([stamp, sym, *map(repr, cells)]))
    rc, out = cli(tmp_path, "\n".join(lines) + "\n", "--interval", "1m")
    assert rc == 0
    frame = pd.read_csv(out)
    for sym, s in series.items():
        expected = run_state(s)
        for name in INDICATOR_NAMES:
            assert np.array_equal(frame[frame.symbol == sym][name].to_numpy(), expected[name], equal_nan=True), name


def test_cli_infers_the_interval_from_the_median_step(tmp_path):
    lines = ["time,symbol,open,high,low,close,volume"]
    start = pd.Timestamp("2024-03-01T00:00:00Z")
    for i, c in enumerate(make_series("walk", n=30)["close"]):
        minutes = 5 * i + (7 if i > 20 else 0)  # 5-minute bars with one longer step
        stamp = (start + pd.Timedelta(minutes=minutes)).isoformat()
        lines.append(f"{stamp},D,{float(c)!r},{float(c)!r},{float(c)!r},{float(c)!r},1")
    text = "\n".join(lines) + "\n"
    rc, inferred = cli(tmp_path, text)
    inferred_vol = pd.read_csv(inferred).volatility_20.to_numpy()
    rc2, given = cli(tmp_path, text, "--interval", "5m")
    assert rc == rc2 == 0
    assert np.array_equal(inferred_vol, pd.read_csv(given).volatility_20.to_numpy(), equal_nan=True)
    assert np.isnan(inferred_vol[19]) and not np.isnan(inferred_vol[20])


HEADER = "time,symbol,open,high,low,close,volume\n"
OK_ROW = "2024-01-01T00:00:00Z,A,1,2,0.5,1.5,10\n"


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("time,symbol,open,high,low,close\n" + OK_ROW, 1, "missing column(s) volume"),
        (HEADER + OK_ROW + "2024-01-01T00:01:00Z,A,1,2,0.5,abc,10\n", 3, "close is not a number: 'abc'"),
        (
            HEADER + OK_ROW + "2024-01-01T00:01:00Z,B,1,2,0.5,1.5,10\n2024-01-01T00:00:00Z,B,1,2,0.5,1.5,10\n",
            4,
            "bars of B out of time order",
        ),
        (HEADER + OK_ROW + OK_ROW.replace("00:00Z", "01:00Z"), 3, None),  # control: valid
        (
            HEADER + OK_ROW + "2024-01-01T00:01:00Z,A,1,NaN,0.5,1.5,10\n",
            3,
            "high must be a finite positive number, got nan",
        ),
        (HEADER + OK_ROW + "yesterday,A,1,2,0.5,1.5,10\n", 3, "time is not an ISO-8601 timestamp"),
        (HEADER + OK_ROW + "2024-01-01T00:01:00Z,A,1,2\n", 3, "4 fields, the header has 7"),
        (HEADER + OK_ROW + OK_ROW, 3, "bars of A out of time order"),
    ],
)
def test_cli_bad_input_one_line_exit_2_no_output(tmp_path, capsys, text, line, message):
    rc, out = cli(tmp_path, text)
    err = capsys.readouterr().err
    if message is None:
        assert rc == 0 and out.exists() and err == ""
        return
    assert rc == 2
    assert err.count("\n") == 1 and f"bars.csv line {line}: {message}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.csv"]  # no output, no temp file


def test_cli_bad_interval_and_missing_input(tmp_path, capsys):
    rc, out = cli(tmp_path, HEADER + OK_ROW, "--interval", "fortnight")
    assert rc == 2 and not out.exists() and "bad interval 'fortnight'" in capsys.readouterr().err
    assert main(["indicators", "--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err and not (tmp_path / "o.csv").exists()


def test_cli_reads_yahoos_capitalised_headers_and_says_what_it_wrote(tmp_path, capsys):
    ours = HEADER + OK_ROW + OK_ROW.replace("00:00Z", "01:00Z")
    yahoo = (
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2024-01-01T00:00:00Z,1,2,0.5,1.5,1.4,10\n2024-01-01T00:01:00Z,1,2,0.5,1.5,1.4,10\n"
    )
    rc, mine = cli(tmp_path, ours)
    ours_out = capsys.readouterr().out
    src = tmp_path / "A.csv"  # no symbol column: the file's stem
    src.write_text(yahoo)
    theirs = tmp_path / "yahoo-out.csv"
    assert rc == 0 and main(["indicators", "--input", str(src), "--output", str(theirs)]) == 0
    assert capsys.readouterr().out == (
        f"wrote {theirs}: 2 rows of 1 symbol(s) (A), the 7 input columns + {len(INDICATOR_NAMES)} indicator columns\n"
    )
    assert ours_out.startswith(f"wrote {mine}: 2 rows of 1 symbol(s) (A), the 7 input columns")
    # the same indicator values as the file with our headers
    ind = slice(7, None)
    assert [r.split(",")[ind] for r in theirs.read_text().splitlines()[1:]] == [
        r.split(",")[ind] for r in mine.read_text().splitlines()[1:]
    ]
    assert theirs.read_text().splitlines()[0].startswith("Date,Open,High,Low,Close,Adj Close,Volume,")
    assert main(["indicators", "--input", str(src), "--output", str(theirs), "--symbol", "ZZ"]) == 0
    assert "(ZZ)" in capsys.readouterr().out

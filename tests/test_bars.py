"""Bar aggregation core: exact bars, lateness, state round trip, batching independence."""

from __future__ import annotations

import json
import random

import pytest

from ticktape.core.bars import BarAggregator

S = 1_000_000  # µs
GRACE = 500_000
T0 = 1_700_000_000 * S  # a whole minute: 1_700_000_000 = 28_333_333 min + 20 s
M0 = T0 - 20 * S  # start of T0's minute


def tick(symbol, ts, price=None, size=None, bid=None):
    return {
        "event_id": f"{symbol}:{ts}",
        "symbol": symbol,
        "ts": ts,
        "source": "test",
        "seq": 0,
        "price": price,
        "size": size,
        "bid": bid,
        "ask": None,
        "bid_size": None,
        "ask_size": None,
    }


def bar(symbol, interval, start, width, o, h, lo, c, volume, vwap, n):
    return {
        "event_id": f"{symbol}:{interval}:{start}",
        "symbol": symbol,
        "interval": interval,
        "ts": start + width,
        "window_start": start,
        "window_end": start + width,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": volume,
        "vwap": vwap,
        "trade_count": n,
    }


def test_one_second_bars_with_out_of_order_tick_within_grace():
    agg = BarAggregator(["1s"], GRACE)
    out = agg.process(
        [
            tick("AAPL", T0 + 100_000, 10.0, 1.0),
            tick("AAPL", T0 + 900_000, 12.0, 2.0),
            tick("AAPL", T0 + 1_200_000, 11.0, 1.0),  # next window; watermark T0+1.2 s
            tick("AAPL", T0 + 50_000, 9.0, 1.0),  # out of order, window [T0, T0+1s) still open
        ]
    )
    assert out.bars == [] and out.late == [] and out.invalid == []
    out = agg.add(tick("AAPL", T0 + 1_500_000, 11.5, 1.0))  # watermark = T0 + 1 s + grace
    # open/close by event time: the out-of-order 9.0 at +50 ms is the open
    assert out.bars == [bar("AAPL", "1s", T0, S, 9.0, 12.0, 9.0, 12.0, 4.0, (10 + 24 + 9) / 4.0, 3)]
    assert agg.watermark == T0 + 1_500_000


def test_late_tick_beyond_grace_is_reported_per_interval_and_not_merged():
    agg = BarAggregator(["1s", "1m"], GRACE)
    out = agg.process(
        [
            tick("AAPL", T0 + 100_000, 10.0, 1.0),
            tick("AAPL", T0 + 1_600_000, 11.0, 1.0),  # closes AAPL's first 1 s window
            tick("AAPL", T0 + 200_000, 99.0, 5.0),  # late for 1s, on time for 1m
        ]
    )
    assert out.bars == [bar("AAPL", "1s", T0, S, 10.0, 10.0, 10.0, 10.0, 1.0, 10.0, 1)]
    assert out.late == [(2, ("1s",))]
    out = agg.add(tick("AAPL", M0 + 60 * S + GRACE, 12.0, 1.0))
    assert out.bars == [
        bar("AAPL", "1s", T0 + S, S, 11.0, 11.0, 11.0, 11.0, 1.0, 11.0, 1),
        bar("AAPL", "1m", M0, 60 * S, 10.0, 99.0, 10.0, 11.0, 7.0, (10 + 11 + 99 * 5) / 7.0, 3),
    ]
    # a tick for the closed minute is late for both intervals
    assert agg.add(tick("AAPL", M0 + 59 * S, 1.0, 1.0)).late == [(0, ("1s", "1m"))]


def test_symbols_share_the_partition_watermark_and_bars_come_in_order():
    agg = BarAggregator(["1s"], GRACE)
    out = agg.process(
        [
            tick("MSFT", T0 + 10, 20.0, 1.0),
            tick("AAPL", T0 + 20, 10.0, 3.0),
            tick("AAPL", T0 + S + 30, 10.5, 1.0),
            tick("IBM", T0 + 3 * S, 5.0, 1.0),  # closes both windows at T0+1s and AAPL's at T0+2s
        ]
    )
    assert [(b["window_end"], b["symbol"]) for b in out.bars] == [
        (T0 + S, "AAPL"),
        (T0 + S, "MSFT"),
        (T0 + 2 * S, "AAPL"),
    ]
    assert out.bars[1] == bar("MSFT", "1s", T0, S, 20.0, 20.0, 20.0, 20.0, 1.0, 20.0, 1)


def test_quote_only_ticks_move_the_watermark_but_form_no_bar():
    agg = BarAggregator(["1s"], GRACE)
    out = agg.process(
        [
            tick("AAPL", T0, bid=9.9),  # quote only
            tick("AAPL", T0 + 1, 10.0, None),  # price without size: no trade
            tick("AAPL", T0 + 5 * S, bid=10.1),
        ]
    )
    assert out == ([], [], []) and agg.watermark == T0 + 5 * S and agg.symbols == []
    out = agg.process([tick("AAPL", T0 + 5 * S, 10.0, 1.0), tick("AAPL", T0 + 7 * S, bid=10.0)])
    assert out.bars == [bar("AAPL", "1s", T0 + 5 * S, S, 10.0, 10.0, 10.0, 10.0, 1.0, 10.0, 1)]


def test_empty_windows_produce_no_bar_and_zero_volume_vwap_is_close():
    agg = BarAggregator(["1s"], GRACE)
    out = agg.process(
        [
            tick("AAPL", T0, 10.0, 0.0),
            tick("AAPL", T0 + 10, 10.2, 0.0),
            tick("AAPL", T0 + 10 * S, 11.0, 1.0),
            tick("AAPL", T0 + 20 * S, bid=1.0),
        ]
    )
    assert out.bars == [
        bar("AAPL", "1s", T0, S, 10.0, 10.2, 10.0, 10.2, 0.0, 10.2, 2),
        bar("AAPL", "1s", T0 + 10 * S, S, 11.0, 11.0, 11.0, 11.0, 1.0, 11.0, 1),
    ]


def test_invalid_trades_are_reported_and_ignored():
    agg = BarAggregator(["1s"], GRACE)
    out = agg.process(
        [
            tick("AAPL", T0, float("nan"), 1.0),
            tick("AAPL", T0 + 1, 10.0, -1.0),
            tick("AAPL", T0 + 2, float("inf"), 1.0),
            tick("AAPL", T0 + 3, 10.0, 1.0),
            tick("AAPL", T0 + 2 * S, bid=1.0),
        ]
    )
    assert [(i, reason.split(":")[0]) for i, reason in out.invalid] == [
        (0, "invalid trade"),
        (1, "invalid trade"),
        (2, "invalid trade"),
    ]
    assert "size=-1.0" in out.invalid[1][1]
    assert out.bars == [bar("AAPL", "1s", T0, S, 10.0, 10.0, 10.0, 10.0, 1.0, 10.0, 1)]


def test_redelivered_positions_are_skipped():
    ticks = [tick("AAPL", T0, 10.0, 1.0), tick("AAPL", T0 + 10, 11.0, 1.0), tick("AAPL", T0 + 3 * S, 12.0, 1.0)]
    agg = BarAggregator(["1s"], GRACE)
    agg.process(ticks[:2], [0, 1])
    out = agg.process(ticks, [0, 1, 2])  # a restart redelivers positions 0 and 1
    assert out.bars == [bar("AAPL", "1s", T0, S, 10.0, 11.0, 10.0, 11.0, 2.0, 10.5, 2)]


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="bad interval '1x'"):
        BarAggregator(["1x"], GRACE)
    with pytest.raises(ValueError, match="at least one"):
        BarAggregator([], GRACE)


# --- determinism over random streams -----------------------------------------------
def random_ticks(seed: int, n: int = 3000) -> list[dict]:
    """Trades and quotes for 4 symbols over ~3 min with up to 1.5 s of disorder."""
    rng = random.Random(seed)
    out = []
    t = T0
    for _ in range(n):
        t += rng.randint(0, 120_000)
        ts = t - rng.choice([0, 0, 0, rng.randint(0, 1_500_000)])
        sym = rng.choice(["AAPL", "MSFT", "IBM", "BRK-B"])
        if rng.random() < 0.2:
            out.append(tick(sym, ts, bid=100.0))
        else:
            out.append(tick(sym, ts, round(rng.uniform(90, 110), 2), float(rng.randint(0, 5) * 100)))
    return out


def run(ticks, cuts, intervals=("1s", "1m"), positions=False):
    """All bars and late indices when the stream is processed in pieces cut at ``cuts``."""
    agg = BarAggregator(intervals, GRACE)
    bars, late = [], []
    bounds = [0, *cuts, len(ticks)]
    for a, b in zip(bounds, bounds[1:]):
        out = agg.process(ticks[a:b], list(range(a, b)) if positions else None)
        bars += out.bars
        late += [(a + i, ivs) for i, ivs in out.late]
    return bars, late


def test_output_does_not_depend_on_batching():
    ticks = random_ticks(1)
    whole = run(ticks, [])
    assert len(whole[0]) > 300 and len(whole[1]) > 50  # the stream exercises closing and lateness
    assert run(ticks, list(range(1, len(ticks)))) == whole
    rng = random.Random(7)
    for _ in range(5):
        assert run(ticks, sorted(rng.sample(range(1, len(ticks)), 40))) == whole
    assert run(ticks, [500, 2000], positions=True) == whole
    ids = [b["event_id"] for b in whole[0]]
    assert len(ids) == len(set(ids))
    keys = [(b["window_end"], b["symbol"], b["interval"] == "1m") for b in whole[0]]
    assert keys == sorted(keys)


def test_every_trade_lands_in_a_bar_or_is_late():
    ticks = random_ticks(2)
    bars, late = run(ticks, [1000])
    late_for = dict(late)
    for interval in ("1s", "1m"):
        trades = [i for i, t in enumerate(ticks) if t["price"] is not None]
        on_time = [i for i in trades if interval not in late_for.get(i, ())]
        in_bars = [b for b in bars if b["interval"] == interval]
        # the last windows stay open (the watermark only moves with data)
        open_count = len(on_time) - sum(b["trade_count"] for b in in_bars)
        last_end = max(b["window_end"] for b in in_bars)
        assert open_count == sum(1 for i in on_time if ticks[i]["ts"] >= last_end)
        assert sum(b["volume"] for b in in_bars) == sum(ticks[i]["size"] for i in on_time if ticks[i]["ts"] < last_end)


def test_state_round_trip_mid_stream_gives_identical_output():
    ticks = random_ticks(3)
    whole = run(ticks, [], positions=True)
    for cut in (1, 777, 1500, 2999):
        first = BarAggregator(["1s", "1m"], GRACE)
        out1 = first.process(ticks[:cut], list(range(cut)))
        state = json.loads(json.dumps(first.to_state()))  # as stored in a table
        assert state == first.to_state()
        second = BarAggregator.from_state(state, ["1s", "1m"], GRACE)
        assert second.to_state() == first.to_state()
        back = max(0, cut - 100)  # redeliver up to 100 ticks already applied
        out2 = second.process(ticks[back:], list(range(back, len(ticks))))
        assert out1.bars + out2.bars == whole[0]
        assert [(i, v) for i, v in out1.late] + [(back + i, v) for i, v in out2.late] == whole[1]


def test_state_by_symbol_restores_the_same_aggregator():
    ticks = random_ticks(4, 800)
    agg = BarAggregator(["1s", "1m"], GRACE)
    agg.process(ticks, list(range(len(ticks))))
    assert agg.take_dirty() == ["AAPL", "BRK-B", "IBM", "MSFT"] and agg.take_dirty() == []
    rebuilt = BarAggregator(["1s", "1m"], GRACE)
    rebuilt.watermark = agg.watermark
    for sym in agg.symbols:
        rebuilt.set_symbol_state(sym, json.loads(json.dumps(agg.symbol_state(sym))))
    more = random_ticks(5, 500)
    assert rebuilt.process(more) == agg.process(more)


def message_runs(seed: int, n_messages: int = 400) -> list[tuple]:
    """TickBatch-like runs ``(symbol, times, prices, sizes, first position)`` for 3
    symbols: mostly in-order valid trades (the folded path), with runs that cross
    windows, tie times, hold a quote, a NaN, a negative size or disorder, come late, or
    are redelivered (the tick-by-tick path)."""
    rng = random.Random(seed)
    runs, t, offset = [], T0, 0
    for _ in range(n_messages):
        sym = rng.choice(["AAPL", "MSFT", "IBM"])
        n = rng.choice([1, 2, 5, 30, 80])
        times = []
        for _ in range(n):
            t += rng.choice([0, 1_000, 20_000, 300_000])
            times.append(t)
        prices = [rng.choice([100.0, 100.5, 99.25, 0.0, -0.0, rng.uniform(90, 110)]) for _ in range(n)]
        sizes = [rng.choice([0.0, 100.0, 0.1, 0.7, 1e-3, 3.3]) for _ in range(n)]  # sums that round
        spoil = rng.random()
        if spoil < 0.05:
            prices[rng.randrange(n)] = None
        elif spoil < 0.08:
            prices[rng.randrange(n)] = float("nan")
        elif spoil < 0.10:
            sizes[rng.randrange(n)] = -1.0
        elif spoil < 0.15 and n > 1:
            times.reverse()
        elif spoil < 0.20:
            times = [x - rng.randint(0, 3_000_000) for x in times]  # may be late
        if spoil > 0.97 and runs:
            runs.append(rng.choice(runs))  # a redelivered message
            continue
        runs.append((sym, times, prices, sizes, offset * 1000))
        offset += 1
    return runs


@pytest.mark.parametrize("seed", range(6))
def test_runs_give_what_ticks_one_by_one_give(seed):
    runs = message_runs(seed)
    by_runs, by_ticks = BarAggregator(["1s", "1m"], GRACE), BarAggregator(["1s", "1m"], GRACE)
    out_runs, out_ticks = [], []
    for cut in range(0, len(runs), 7):
        chunk = runs[cut : cut + 7]
        out_runs.append(by_runs.process_runs(chunk))
        cols = [[], [], [], [], []]
        for sym, times, prices, sizes, first in chunk:
            for col, items in zip(cols, ([sym] * len(times), times, prices, sizes, range(first, first + len(times)))):
                col += items
        out_ticks.append(by_ticks.process_columns(*cols))
        assert by_runs.take_dirty() == by_ticks.take_dirty()
    # json keeps -0.0 apart from 0.0: the floats are equal bit for bit
    assert json.dumps(out_runs) == json.dumps(out_ticks)
    assert json.dumps(by_runs.to_state()) == json.dumps(by_ticks.to_state())
    assert sum(len(o.bars) for o in out_runs) > 100
    assert sum(len(o.late) for o in out_runs) > 0 and sum(len(o.invalid) for o in out_runs) > 0


def test_a_run_that_starts_right_at_a_closed_window_end_is_late_as_ticks_are():
    """The watermark at exactly window end + grace has closed the window."""
    outs = []
    for fold in (True, False):
        agg = BarAggregator(["1s"], GRACE)
        agg.add(tick("AAPL", T0 + S + GRACE, 10.0, 1.0))  # watermark = close of [T0, T0 + 1 s)
        run = ("MSFT", [T0 + S - 1, T0 + S], [11.0, 12.0], [1.0, 1.0], 0)
        outs.append(agg.process_runs([run]) if fold else agg.process_columns(["MSFT"] * 2, *run[1:4], [0, 1]))
        outs.append(agg.to_state())
    assert outs[0] == outs[2] and outs[1] == outs[3]
    assert outs[0].late == [(0, ("1s",))]

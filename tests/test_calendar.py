"""The market calendar (MARKET_CALENDAR): sessions, no tick / bar / order outside them,
the day's last bars closed at the close by a close heartbeat, backtests and training
skipping closed days."""

from __future__ import annotations

import argparse
import dataclasses
import threading

import numpy as np
import pytest
from alpaca_server import AlpacaServer, trade
from test_websocket_source import KEY, SECRET, run_feed, ws_settings
from trading_events import signal, tick

from producers import sim as sim_producer
from producers.base import EventPublisher, StopFlag
from producers.websocket import WebSocketFeed
from ticktape import kafka_clients
from ticktape.commands.backtest import Market, in_sessions
from ticktape.commands.produce import parse_time
from ticktape.commands.train import _select
from ticktape.config import ConfigError
from ticktape.config import settings as make_settings
from ticktape.core import risk as rk
from ticktape.core.bars import BarAggregator, is_heartbeat
from ticktape.core.features import FEATURE_NAMES, Bars, build_dataset
from ticktape.market_calendar import market_hours
from ticktape.serde import Serde

MIN = 60_000_000
FRI_CLOSE = parse_time("2024-05-03T20:00:00Z")  # 16:00 in New York
MON_OPEN = parse_time("2024-05-06T13:30:00Z")  # 09:30


def hours(**kw):
    return market_hours(make_settings(market_calendar="XNYS", **kw))


# --- the pure part ------------------------------------------------------------------
def test_xnys_sessions_holidays_early_closes_and_extended_hours():
    h = hours()
    assert h.session_at(FRI_CLOSE - 1) == (parse_time("2024-05-03T13:30:00Z"), FRI_CLOSE)
    assert (h.is_open(FRI_CLOSE - 1), h.is_open(FRI_CLOSE), h.is_open(MON_OPEN - 1), h.is_open(MON_OPEN)) == (
        True,
        False,
        False,
        True,
    )
    assert h.is_open(parse_time("2024-07-04T15:00:00Z")) is False  # Independence Day
    assert h.session_at(parse_time("2024-11-29T15:00:00Z"))[1] == parse_time("2024-11-29T18:00:00Z")  # 13:00 ET
    assert h.session_at(parse_time("2024-01-02T15:00:00Z")) == (
        parse_time("2024-01-02T14:30:00Z"),
        parse_time("2024-01-02T21:00:00Z"),
    )  # EST
    assert h.next_close(FRI_CLOSE) == parse_time("2024-05-06T20:00:00Z")
    assert h.closes_in(FRI_CLOSE - 1, MON_OPEN) == [FRI_CLOSE]
    assert h.overlaps(parse_time("2024-05-03T00:00:00Z"), parse_time("2024-05-04T00:00:00Z"))  # Friday 1d
    assert not h.overlaps(parse_time("2024-05-04T00:00:00Z"), parse_time("2024-05-05T00:00:00Z"))  # Saturday
    assert not h.is_open(parse_time("1999-06-01T15:00:00Z"))  # before the calendar's years: closed
    ext = hours(market_pre_minutes=330, market_post_minutes=240)
    assert ext.name == "XNYS+pre+post"
    assert ext.session_at(MON_OPEN) == (parse_time("2024-05-06T08:00:00Z"), parse_time("2024-05-07T00:00:00Z"))
    # the session clock skips the weekend: 1 min before Friday's close + 2 min = Monday 09:31
    got = h.session_clock(FRI_CLOSE - MIN, np.array([0, MIN - 1, MIN, 2 * MIN]))
    assert got.tolist() == [FRI_CLOSE - MIN, FRI_CLOSE - 1, MON_OPEN, MON_OPEN + MIN]
    assert h.session_clock(FRI_CLOSE + 5 * MIN, np.array([0])).tolist() == [MON_OPEN]


def test_a_bad_calendar_name_is_one_clear_error():
    with pytest.raises(ConfigError, match="MARKET_CALENDAR='NOPE' is not an exchange calendar"):
        market_hours(make_settings(market_calendar="nope"))
    assert market_hours(make_settings(market_calendar="off")) is None


def test_the_risk_engine_rejects_orders_outside_the_session_by_event_time():
    limits = rk.RiskLimits.from_dict(
        {
            "defaults": {
                "initial_state": "ACTIVE",
                "max_gross_exposure": 1e9,
                "daily_loss_limit": 1e9,
                "max_orders_per_symbol": 100,
                "max_orders_total": 100,
                "rate_window_s": 60,
                "stale_after_s": 1e6,
                "symbol_defaults": {
                    "max_position_qty": 1e6,
                    "max_position_notional": 1e9,
                    "max_order_notional": 1e9,
                    "price_collar_pct": 5,
                },
            }
        }
    ).with_market_hours(hours())
    r = rk.Risk("paper", limits.for_account("paper"), 100_000.0)
    rk.on_tick(r, tick("AAPL", FRI_CLOSE - 2, price=100.0))
    [inside] = rk.on_signal(r, signal("AAPL", FRI_CLOSE - 1, 10, 100.0))
    assert inside["event_id"] == f"ord:sig:paper:AAPL:{FRI_CLOSE - 1}:0" and inside["quantity"] == 10
    [after] = rk.on_signal(r, signal("AAPL", FRI_CLOSE, 20, 100.0, committed=10))
    assert (after["reason_code"], after["detail"]) == (
        "MARKET_CLOSED",
        "2024-05-03T20:00:00.000000Z is outside the XNYS sessions",
    )
    assert r.committed == {"AAPL": 10}  # the rejection committed nothing
    [monday] = rk.on_signal(r, signal("AAPL", MON_OPEN, 20, 100.0, committed=10))
    assert (monday["event_id"], monday["quantity"]) == (f"ord:sig:paper:AAPL:{MON_OPEN}:0", 10)  # open again


def test_backtests_and_training_skip_closed_days():
    h = hours()

    def bar(start, width=MIN):
        return {"symbol": "AAPL", "window_start": start, "window_end": start + width, "ts": start + width}

    bars = [bar(FRI_CLOSE - MIN), bar(FRI_CLOSE), bar(parse_time("2024-05-04T15:00:00Z")), bar(MON_OPEN)]
    kept = in_sessions(Market("test", {}, bars, "1m"), h).bars
    assert [b["window_start"] for b in kept] == [FRI_CLOSE - MIN, MON_OPEN]
    hb = {"event_id": "hb", "ts": FRI_CLOSE + 1, "source": "sim", "partition": 0}
    ticks = {
        0: [
            tick("AAPL", FRI_CLOSE - 1, price=1.0),
            tick("AAPL", FRI_CLOSE, price=1.0),
            hb,
            tick("AAPL", MON_OPEN, price=1.0),
        ]
    }
    assert [t["ts"] for t in in_sessions(Market("test", ticks), h).ticks[0]] == [FRI_CLOSE - 1, FRI_CLOSE + 1, MON_OPEN]
    days = [parse_time(f"2024-05-0{d}T00:00:00Z") for d in (3, 4, 5, 6)]  # Fri, Sat, Sun, Mon daily bars
    daily = Bars(["AAPL"] * 4, days, [1.0] * 4, [1.0] * 4, [1.0] * 4, [1.0] * 4, [1.0] * 4)
    assert _select(daily, None, None, None, h, 86_400_000_000).window_start == [days[0], days[3]]
    assert in_sessions(Market("test", {}, bars, "1m"), None).bars == bars  # MARKET_CALENDAR=off


# --- live sources against the broker -------------------------------------------------
def partition_log(s, topic="md.ticks") -> dict[int, list[dict]]:
    """Every message of a topic per partition, in offset order (heartbeats included)."""
    from confluent_kafka import TopicPartition

    name = s.topic(topic)
    consumer = kafka_clients.consumer(s, s.group("test-reader"))
    parts = kafka_clients.admin(s).list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, 0) for p in parts])
    serde, out, idle = Serde(), {p: [] for p in parts}, 0
    while idle < 8:
        msg = consumer.poll(0.25)
        if msg is None:
            idle += 1
            continue
        idle = 0
        assert msg.error() is None, msg.error()
        out[msg.partition()].append(serde.decode(msg.value())[1])
    consumer.close()
    return out


def bars_closed_by(events: list[dict], grace_us: int) -> list[tuple[int, dict]]:
    """(index of the message that closed it, bar) for one partition's log, as the bars
    stage folds it (its core aggregator, 1m)."""
    agg, out = BarAggregator(["1m"], grace_us), []
    for i, ev in enumerate(events):
        out += [(i, b) for b in agg.add(ev).bars]
    return out


@pytest.mark.slow
def test_the_simulator_follows_the_calendar_and_closes_the_day_at_the_close(settings):
    """Friday 15:58 ET to Monday 09:31 ET: 2 + 1 minutes of session, nothing in between;
    a close heartbeat at Friday's close + grace on every partition closes Friday's last
    bars before any Monday tick."""
    s = dataclasses.replace(settings, market_calendar="XNYS", sim_calendar=1, heartbeat_ms=0)
    kafka_clients.ensure_topics(s, ["md.ticks"])
    start = FRI_CLOSE - 2 * MIN
    args = argparse.Namespace(
        rate=20.0,
        symbols="AAPL,MSFT,NVDA",
        seed=7,
        start=start,
        speed=None,
        count=None,
        duration=(MON_OPEN + MIN - start) / 1e6,
    )
    assert sim_producer.run(args, s, StopFlag(install_signals=False)) == 0
    log = partition_log(s)
    ticks = [e for evs in log.values() for e in evs if not is_heartbeat(e)]
    assert len(ticks) == 3 * 60 * 20  # 3 minutes of session at 20 ticks/s
    h = hours()
    assert all(h.is_open(t["ts"]) for t in ticks)
    # a tick every 50 ms of session time from 15:58:00.05: the 2400th falls on the close,
    # which is Monday's open on the session clock
    assert sum(t["ts"] < FRI_CLOSE for t in ticks) == 2399
    assert min(t["ts"] for t in ticks if t["ts"] > FRI_CLOSE) == MON_OPEN
    grace = s.bar_grace_ms * 1000
    closed_at_close = set()
    for p, events in log.items():
        hbs = [(i, e) for i, e in enumerate(events) if is_heartbeat(e)]
        assert [e for _, e in hbs] == [
            {"event_id": f"hb:sim:{p}:{FRI_CLOSE + grace}", "ts": FRI_CLOSE + grace, "source": "sim", "partition": p}
        ]
        at = hbs[0][0]
        assert all(e["ts"] < FRI_CLOSE for e in events[:at]) and all(e["ts"] >= MON_OPEN for e in events[at + 1 :])
        closed = bars_closed_by(events, grace)
        last = {b["symbol"]: i for i, b in closed if b["window_end"] == FRI_CLOSE}
        assert set(last) == {e["symbol"] for e in events[:at]}  # every symbol of the partition: its 15:59 bar
        assert set(last.values()) <= {at}  # ... closed by the close heartbeat, at the close
        assert all(b["window_end"] <= FRI_CLOSE for _, b in closed)  # Monday's bar is still open
        closed_at_close |= set(last)
    assert closed_at_close == {"AAPL", "MSFT", "NVDA"}


@pytest.mark.slow
def test_the_websocket_feed_publishes_only_inside_the_session(settings):
    fri, sat = FRI_CLOSE - 1000, parse_time("2024-05-04T15:00:00Z")
    msgs = [
        trade("AAPL", 1, fri, 100.0, 1),
        trade("AAPL", 2, FRI_CLOSE, 100.1, 1),
        trade("AAPL", 3, sat, 100.2, 1),
        trade("AAPL", 4, MON_OPEN - 1, 100.3, 1),
        trade("AAPL", 5, MON_OPEN, 100.4, 1),
    ]
    with AlpacaServer(KEY, SECRET, scripts=[[("data", msgs)]]) as server:
        s = ws_settings(settings, server.url, market_calendar="XNYS", heartbeat_ms=0)
        feed = run_feed(s, ["AAPL"], count=2)
    assert feed.stats.received == {"trade": 2, "outside_session": 3}
    log = partition_log(s)
    events = [e for evs in log.values() for e in evs]
    assert [e["ts"] for e in events if not is_heartbeat(e)] == [fri, MON_OPEN]
    grace = s.bar_grace_ms * 1000
    assert sorted((e["partition"], e["ts"]) for e in events if is_heartbeat(e)) == [
        (p, FRI_CLOSE + grace) for p in sorted(log)
    ]


def test_no_order_outside_the_session_through_the_trading_chain():
    """The calendar's simulator (Friday 15:00-16:00 ET, Monday 09:30-10:30 ET) through bars,
    predictions, strategy, risk and paper execution: the bars that end at Friday's close
    give signals at the close, which the risk engine rejects (MARKET_CLOSED); without the
    calendar the same run sends orders then."""
    from ticktape.core import backtest as bt
    from ticktape.core.execution import ExecConfig
    from ticktape.core.ml import Model, TrainParams, train
    from ticktape.core.replay import partition_for
    from ticktape.core.sim import MarketSimulator
    from ticktape.core.simbars import simulated_bars
    from ticktape.core.strategy import StrategyConfig
    from ticktape.risk_config import DEFAULT_RISK_CONFIG, load_risk_limits

    h, syms, start = hours(), ["AAA", "BBB", "CCC", "DDD"], FRI_CLOSE - 60 * MIN
    sim = MarketSimulator(syms, seed=3, tick_rate=10.0, start_us=start, clock=lambda e: h.session_clock(start, e))
    ticks: dict[int, list[dict]] = {p: [] for p in range(6)}
    while True:
        chunk = [t for t in sim.next_chunk() if t["ts"] <= MON_OPEN + 60 * MIN]
        for t in chunk:
            ticks[partition_for(t["symbol"], 6)].append(t)
        if len(chunk) < 4096:
            break
    hist = simulated_bars(syms, seed=5, start_us=start - 600 * MIN, minutes=480, tick_rate=5.0)
    short = [f for f in FEATURE_NAMES if f not in ("sma_200_rel", "sma_50_rel")]  # 200 bars of lookback
    t = train(build_dataset(Bars.from_events(hist), "1m", 5), short, 0.2, TrainParams(rounds=15), "direction")
    model = Model.load(t.artifact, t.metadata)
    limits = load_risk_limits(DEFAULT_RISK_CONFIG)
    runs = {}
    for name, lim in (("calendar", limits.with_market_hours(h)), ("off", limits)):
        setup = bt.Setup(
            ("1m",),
            500_000,
            StrategyConfig(enter_p=0.52, exit_p=0.51, min_hold_bars=1),
            ExecConfig(),
            lim,
            {},
            1_000_000.0,
            tuple(syms),
        )
        flushed = {p: list(v) for p, v in ticks.items()}
        for f in bt.flush_ticks(MON_OPEN + 60 * MIN, setup, 6):
            flushed[f["seq"]].append(f)
        runs[name] = bt.run(flushed, setup, model)
    on, off = runs["calendar"], runs["off"]
    assert all(h.is_open(o["ts"]) for o in on["order"]) and len(on["order"]) > 10
    assert all(h.is_open(f["ts"]) for f in on["fill"])
    at_close = [r for r in on["order_rejected"] if r["reason_code"] == "MARKET_CLOSED"]
    assert at_close and {r["ts"] for r in at_close} == {FRI_CLOSE}
    assert {o["ts"] for o in off["order"] if not h.is_open(o["ts"])} == {FRI_CLOSE}  # the check is not idle


@pytest.mark.slow
def test_a_live_feed_that_goes_quiet_at_the_close_announces_the_close_on_its_clock(settings):
    """No tick after the close: the heartbeat thread's clock (the last tick's time plus the
    wall time since) reaches the close and sends the close heartbeats."""
    last = FRI_CLOSE - 300_000  # 0.3 s before the close
    with AlpacaServer(KEY, SECRET, scripts=[[("data", [trade("AAPL", 1, last, 100.0, 1)])]]) as server:
        s = ws_settings(settings, server.url, market_calendar="XNYS", heartbeat_ms=100)
        pub = EventPublisher(s, stage="websocket")
        stop = StopFlag(install_signals=False)

        def stop_once_announced():
            while not pub.closes_announced and not stop.wait(0.05):
                pass
            stop.set()

        watcher = threading.Thread(target=stop_once_announced)
        watcher.start()
        guard = threading.Timer(60, stop.set)
        guard.start()
        try:
            WebSocketFeed(s, ["AAPL"], stop=stop, publisher=pub).run()
        finally:
            guard.cancel()
            watcher.join()
    assert pub.closes_announced == [FRI_CLOSE]
    log = partition_log(s)
    grace = s.bar_grace_ms * 1000
    closes = sorted(
        (e["partition"], e["ts"])
        for evs in log.values()
        for e in evs
        if is_heartbeat(e) and e["ts"] == FRI_CLOSE + grace
    )
    assert closes == [(p, FRI_CLOSE + grace) for p in sorted(log)]
    [tick_partition] = [p for p, evs in log.items() if any(not is_heartbeat(e) for e in evs)]
    events = log[tick_partition]
    assert [e["ts"] for e in events if not is_heartbeat(e)] == [last]
    first_close = next(i for i, e in enumerate(events) if is_heartbeat(e) and e["ts"] == FRI_CLOSE + grace)
    closed = bars_closed_by(events, grace)
    assert [(i, b["window_end"]) for i, b in closed] == [(first_close, FRI_CLOSE)]

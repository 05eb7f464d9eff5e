"""The stream processors' edges on the real broker: far-future and wrongly keyed input,
heartbeats that close a quiet partition's last bars, and a restart after a long gap."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections import defaultdict

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from test_bars import random_ticks
from test_worker import (
    GRACE_MS,
    INTERVALS,
    PARTITIONS,
    Worker,
    decoded,
    expected_indicators,
    expected_output,
    flush_items,
    produce,
    read,
)

from producers.base import EventPublisher
from ticktape import kafka_clients
from ticktape.serde import Serde

serde = Serde()
TEN_YEARS_US = 10 * 365 * 86_400 * 10**6


def test_far_future_and_wrongly_keyed_input_is_dead_lettered_and_moves_nothing(settings, tmp_path):
    kafka_clients.ensure_topics(settings)
    ticks = random_ticks(5, 2000)
    items = [(t["symbol"].encode(), serde.encode("tick", t), None) for t in ticks]
    records = [dict(t) for t in ticks]
    future = dict(ticks[700], ts=ticks[700]["ts"] + TEN_YEARS_US, event_id="future")
    bad = [
        (b"AAPL", serde.encode("tick", dict(future, symbol="AAPL")), None),  # 10 years ahead
        (None, serde.encode("tick", dict(ticks[800], event_id="keyless")), None),  # no key
        (b"MSFT", serde.encode("tick", dict(ticks[900], symbol="IBM", event_id="wrong-key")), None),
    ]
    for k, item in sorted(zip((700, 800, 900), bad), reverse=True):  # each right after the tick it copies
        items.insert(k + 1, item)
        records.insert(k + 1, None)
    hb = {"event_id": "hb-future", "ts": ticks[-1]["ts"] + TEN_YEARS_US, "source": "test", "partition": 1}
    items.append((None, serde.encode("heartbeat", hb), 1))
    records.append(None)
    items += flush_items(ticks[-1]["ts"] + 3600 * 10**6)
    records += [serde.decode(v)[1] for _, v, _ in items[-PARTITIONS:]]
    placed = produce(settings, items)
    bars, late, late_counts = expected_output(records, placed)
    # a 1m bar ten years ahead for AAPL: dead-lettered, AAPL's indicators go on
    last_1m = [b for (t, _), bs in bars.items() if t == "md.bars.1m" for b in bs if b["symbol"] == "AAPL"][0]
    far_bar = dict(
        last_1m,
        ts=last_1m["ts"] + TEN_YEARS_US,
        window_start=last_1m["window_start"] + TEN_YEARS_US,
        window_end=last_1m["window_end"] + TEN_YEARS_US,
        event_id="far-bar",
    )
    prod = kafka_clients.producer(settings)
    prod.produce(settings.topic("md.bars.1m"), value=serde.encode("bar", far_bar), key=b"AAPL", partition=0)
    assert prod.flush(10) == 0

    worker = Worker(settings, tmp_path / "worker.log", WORKER_STAGES="bars,indicators")
    try:
        got = {}
        for interval in INTERVALS:
            topic = f"md.bars.{interval}"
            want = sum(len(v) for (t, _), v in bars.items() if t == topic)
            for partition, msgs in read(settings, topic, want + (interval == "1m")).items():
                got[(topic, partition)] = [b for b in decoded(msgs) if b["event_id"] != "far-bar"]
        assert got == dict(bars), worker.log_tail()  # as if the bad input had never been there
        late_got = read(settings, "md.ticks.late", sum(map(len, late.values())))
        assert {p: [m.value() for m in msgs] for p, msgs in late_got.items()} == dict(late)

        dlq = sorted((m for msgs in read(settings, "dlq.bars", 4).values() for m in msgs), key=lambda m: m.offset())
        reasons = {serde.decode(m.value())[1]["event_id"]: dict(m.headers())["ticktape.error"].decode() for m in dlq}
        assert sorted(reasons) == ["future", "hb-future", "keyless", "wrong-key"]
        assert "MAX_EVENT_AHEAD_MS" in reasons["future"] and "MAX_EVENT_AHEAD_MS" in reasons["hb-future"]
        assert reasons["keyless"].startswith("the message key None is not its symbol")
        assert reasons["wrong-key"].startswith("the message key b'MSFT' is not its symbol 'IBM'")
        assert worker.metric("ticktape_dlq_messages_total", stage="bars", topic="dlq.bars") == 4
        for interval in INTERVALS:
            assert worker.metric("ticktape_late_ticks_total", interval=interval) == late_counts[interval]

        n_bars = sum(map(len, bars.values()))
        got_ind = defaultdict(list)
        for msgs in read(settings, "analytics.indicators", n_bars).values():
            for m in msgs:
                ind = serde.decode(m.value())[1]
                got_ind[(ind["interval"], ind["symbol"])].append(m.value())
        assert got_ind == expected_indicators(bars)  # AAPL's included: the far bar stopped nothing
        [far] = [m for msgs in read(settings, "dlq.indicators", 1).values() for m in msgs]
        assert serde.decode(far.value())[1]["event_id"] == "far-bar"
        assert "MAX_EVENT_AHEAD_MS" in dict(far.headers())["ticktape.error"].decode()
    finally:
        rc = worker.stop()
    assert rc == 0, worker.log_tail()


def test_heartbeats_close_the_last_bar_of_a_session(settings, tmp_path):
    """A live source stops trading but keeps running (the close): its heartbeats move the
    quiet partitions' watermarks, so the last 1 s bar of every symbol closes within
    HEARTBEAT_MS + the window + BAR_GRACE_MS of the last trade, not at the next tick."""
    kafka_clients.ensure_topics(settings)
    s = dataclasses.replace(settings, heartbeat_ms=500)
    worker = Worker(settings, tmp_path / "worker.log", WORKER_STAGES="bars", KAFKA_FETCH_MAX_WAIT_MS="10")
    pub = EventPublisher(s)
    pub.start_heartbeats("test")
    symbols = ["AAPL", "MSFT", "IBM"]
    try:
        time.sleep(8)  # the worker has joined (its group join waits about half the session timeout)
        last = {}
        for i in range(60):
            for sym in symbols:
                ts = time.time_ns() // 1000
                pub.publish(
                    "md.ticks",
                    "tick",
                    {
                        "event_id": f"{sym}:{i}",
                        "symbol": sym,
                        "ts": ts,
                        "source": "test",
                        "seq": i,
                        "price": 100.0 + i,
                        "size": 1.0,
                        "bid": None,
                        "ask": None,
                        "bid_size": None,
                        "ask_size": None,
                    },
                )
                last[sym] = ts
            time.sleep(0.05)
        pub.producer.flush(10)
        stopped = time.time()
        want_window = {sym: ts - ts % 1_000_000 for sym, ts in last.items()}
        seen: dict[str, float] = {}
        cons = kafka_clients.consumer(settings, f"{settings.topic_prefix}bars-reader")
        cons.assign([TopicPartition(settings.topic("md.bars.1s"), p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        deadline = stopped + 20
        while len(seen) < len(symbols) and time.time() < deadline:
            m = cons.poll(0.1)
            if m is not None and m.error() is None:
                b = serde.decode(m.value())[1]
                if b["window_start"] == want_window[b["symbol"]]:
                    seen.setdefault(b["symbol"], time.time())
        cons.close()
        assert sorted(seen) == sorted(symbols), worker.log_tail()  # the last windows closed without a later tick
        # within heartbeat + window + grace of the last trade, plus the hops (fetch waits, batches)
        assert max(seen.values()) - stopped < 0.5 + 1.0 + GRACE_MS / 1000 + 4.0
        assert pub.heartbeats > 0
    finally:
        pub.close()
        rc = worker.stop()
    assert rc == 0, worker.log_tail()


def _bar(symbol, start, price):
    return {
        "event_id": f"{symbol}:1m:{start}",
        "symbol": symbol,
        "interval": "1m",
        "ts": start + 60_000_000,
        "window_start": start,
        "window_end": start + 60_000_000,
        "open": price,
        "high": price,
        "low": price,
        "close": price,
        "volume": 100.0,
        "vwap": price,
        "trade_count": 1,
    }


def test_execution_restarts_after_a_three_day_gap(settings, tmp_path):
    """EXEC_MARKET_DATA=bars: after a gap of more than a day the execution stage forgets
    the old windows with real tombstones, and a restart loads its state and fills."""
    kafka_clients.ensure_topics(settings)
    friday = 1_704_470_400_000_000  # 2024-01-05T16:00:00Z
    monday = friday + 3 * 86_400_000_000
    sym = "AAPL"
    env = dict(WORKER_STAGES="execution", EXEC_MARKET_DATA="bars", STRATEGY_INTERVAL="1m")
    prod = kafka_clients.producer(settings)
    part = 0

    def send(topic, event_type, rec, key=sym):
        prod.produce(settings.topic(topic), value=serde.encode(event_type, rec), key=key.encode(), partition=part)
        assert prod.flush(10) == 0

    for i in range(5):
        send("md.bars.1m", "bar", _bar(sym, friday + i * 60_000_000, 100.0 + i))
    send("md.bars.1m", "bar", _bar(sym, monday, 110.0))  # forgets Friday's 5 windows
    worker = Worker(settings, tmp_path / "worker.log", **env)
    changelog = f"{settings.group('worker')}-execution-changelog"
    try:
        assert worker.wait_metric("ticktape_events_in_total", 6, stage="execution", topic="md.bars.1m", timeout=60), (
            worker.log_tail()
        )
        time.sleep(2)  # the changelog write follows the batch
    finally:
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    cons = kafka_clients.consumer(settings, f"{settings.topic_prefix}cl")
    cons.assign([TopicPartition(changelog, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    values = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        m = cons.poll(0.5)
        if m is not None and m.error() is None:
            values.setdefault(m.key(), []).append(m.value())
    cons.close()
    windows = {k: v for k, v in values.items() if b"@" in k and not k.startswith(b'"@')}
    forgotten = [k for k, v in windows.items() if v[-1] is None]
    assert len(forgotten) == 5 and not any(v == b"null" for vs in values.values() for v in vs)

    worker = Worker(settings, tmp_path / "worker2.log", **env)
    try:
        order = {
            "event_id": "ord:x",
            "account": "paper",
            "symbol": sym,
            "ts": monday + 60_000_000,
            "side": "BUY",
            "quantity": 10.0,
            "order_type": "MARKET",
            "limit_price": None,
            "reference_price": 110.0,
            "signal_id": "sig:x",
        }
        send("trading.orders", "order", order)
        send("md.bars.1m", "bar", _bar(sym, monday + 60_000_000, 111.0))
        [fill] = [serde.decode(m.value())[1] for msgs in read(settings, "trading.fills", 1).values() for m in msgs]
        assert (fill["order_id"], fill["quantity"]) == ("ord:x", 10.0)  # at the open of the bar after it
        assert fill["price"] == 111.0 * (1 + 1 / 10_000)  # EXEC_SLIPPAGE_BPS=1
        assert worker.proc.poll() is None, worker.log_tail()
    finally:
        rc = worker.stop()
    assert rc == 0, worker.log_tail()

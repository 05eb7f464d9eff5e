"""Poison messages on the real broker, PostgreSQL and Redis: a dead letter always fits
the broker, a message too big to forward neither crashes the worker nor stalls a sink,
every invalid value is dead-lettered (once) with a reason and never stored or acted on,
and a null value is poison wherever it is not a tombstone of a compacted topic."""

from __future__ import annotations

import dataclasses
import math

import psycopg
import pytest
from sink_events import event, merge, produce, read_topic, run_until_committed
from test_worker import Worker, flush_items, read

from sinks import schema
from sinks.postgres import PostgresWriter
from sinks.redis_sink import RedisWriter
from sinks.runner import SinkRunner
from ticktape import deadletter, kafka_clients
from ticktape.serde import Serde

serde = Serde()
HUGE = 1 << 20  # a 1 MiB value: over what a producer sends by default once headers are added


@pytest.fixture
def pg_settings(settings, fresh_db, fresh_redis):
    s = dataclasses.replace(
        settings, database_url=fresh_db, redis_url=fresh_redis, sink_batch_size=500, sink_max_latency_ms=100
    )
    schema.migrate(s)
    return s


def headers(msg) -> dict[str, bytes]:
    return dict(msg.headers())


def big_producer(s):
    return kafka_clients.producer(s, **{"message.max.bytes": 4 * HUGE})


def test_dead_letter_fits_the_limit_and_names_its_source():
    small = deadletter.dead_letter(
        "bad", stage="bars", topic="md.ticks", partition=3, offset=17, key=b"AAPL", value=b"x" * 100, max_bytes=8192
    )
    assert (small.key, small.value, small.truncated) == (b"AAPL", b"x" * 100, False)
    assert dict(small.headers) == {
        "ticktape.error": b"bad",
        "ticktape.stage": b"bars",
        "ticktape.source.topic": b"md.ticks",
        "ticktape.source.partition": b"3",
        "ticktape.source.offset": b"17",
        "ticktape.source.size": b"100",
    }
    for key, cut in ((b"AAPL", b"value"), (b"k" * 5000, b"key,value")):
        dl = deadletter.dead_letter(
            "é" * 5000,
            stage="sink-postgres",
            topic="md.ticks",
            partition=0,
            offset=1,
            key=key,
            value=b"v" * HUGE,
            max_bytes=65536,
        )
        h = dict(dl.headers)
        size = len(dl.key) + len(dl.value) + sum(len(k) + len(v) for k, v in dl.headers)
        assert size + deadletter.RECORD_OVERHEAD <= 65536
        assert h["ticktape.truncated"] == cut and h["ticktape.source.size"] == str(HUGE).encode()
        assert dl.value == b"v" * len(dl.value) and len(dl.value) > 60000  # a prefix, as much as fits
        assert h["ticktape.error"].decode() == "é" * 512  # cut on a character boundary
        assert len(dl.key) == min(len(key), deadletter.MAX_KEY_BYTES)


def test_a_huge_message_is_dead_lettered_cut_and_the_worker_keeps_going(settings, tmp_path):
    kafka_clients.ensure_topics(settings, ["md.ticks", "md.bars.1s", "md.bars.1m", "md.ticks.late", "dlq.bars"])
    prod = big_producer(settings)
    prod.produce(settings.topic("md.ticks"), key=b"AAPL", value=b"\xc3\x01" + b"z" * (HUGE - 2), partition=0)
    t0 = 1_767_225_600_000_000
    good = [event("tick", i, symbol="AAPL", ts=t0 + i * 100_000) for i in range(30)]
    for t in good:
        prod.produce(settings.topic("md.ticks"), key=b"AAPL", value=serde.encode("tick", t), partition=0)
    for key, value, p in flush_items(t0 + 3600 * 10**6):
        prod.produce(settings.topic("md.ticks"), key=key, value=value, partition=p)
    assert prod.flush(30) == 0

    worker = Worker(settings, tmp_path / "worker.log", WORKER_STAGES="bars", DLQ_MAX_BYTES="65536")
    try:
        [dead] = read(settings, "dlq.bars", 1)[0]
        h = headers(dead)
        assert h["ticktape.truncated"] == b"value" and h["ticktape.source.size"] == str(HUGE).encode()
        assert (h["ticktape.source.partition"], h["ticktape.source.offset"]) == (b"0", b"0")
        assert h["ticktape.error"].startswith(b"unknown schema fingerprint")
        assert len(dead.value()) < 65536 and dead.value() == (b"\xc3\x01" + b"z" * HUGE)[: len(dead.value())]
        # the ticks after it made their bars: 3 one-second windows of AAPL
        bars = [serde.decode(m.value())[1] for m in read(settings, "md.bars.1s", 3)[0]]
        assert [(b["symbol"], b["trade_count"]) for b in bars] == [("AAPL", 10)] * 3
        assert worker.proc.poll() is None, worker.log_tail()
    finally:
        rc = worker.stop()
    assert rc == 0, worker.log_tail()


def test_a_huge_message_does_not_stall_either_sink_and_each_poison_is_sent_once(pg_settings):
    s = dataclasses.replace(pg_settings, dlq_max_bytes=65536)
    kafka_clients.ensure_topics(s, ["md.ticks", "dlq.postgres", "dlq.redis"])
    good = [event("tick", i, symbol="MSFT") for i in range(20)]
    prod = big_producer(s)
    poison = [b"\xc3\x01" + b"z" * (HUGE - 2), b"not avro", b"\x00\x00", serde.encode("tick", event("tick", 99))[:-3]]
    for value in poison:
        prod.produce(s.topic("md.ticks"), key=b"MSFT", value=value, partition=0)
    assert prod.flush(30) == 0
    ends = produce(s, "md.ticks", "tick", good)
    for writer in (PostgresWriter(s), RedisWriter(s)):
        assert run_until_committed(SinkRunner(s, writer, ["md.ticks"]), ends, timeout=60) == 0
        dead = read_topic(s, s.topic(f"dlq.{writer.name}"), 10, timeout=5)
        assert len(dead) == 4  # each poison message once, nothing re-sent
        assert [int(headers(m)["ticktape.source.offset"]) for m in dead] == [0, 1, 2, 3]
        assert [headers(m).get("ticktape.truncated") for m in dead] == [b"value", None, None, None]
        assert [m.value() for m in dead[1:]] == poison[1:]
    with psycopg.connect(s.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ticks").fetchone()[0] == 20


def _bad_events():
    """(topic, kind, record, reason start) of events that must never be stored."""
    tick, bar, order = event("tick", 1), event("bar", 2), event("order", 3)
    fill, pred = event("fill", 4), event("prediction", 5)
    return [
        ("md.ticks", "tick", tick | {"event_id": "t-nan", "price": math.nan}, "price is nan"),
        ("md.ticks", "tick", tick | {"event_id": "t-inf", "price": math.inf}, "price is inf"),
        ("md.ticks", "tick", tick | {"event_id": "t-neg", "size": -1.0}, "size is -1.0: must not be negative"),
        ("md.ticks", "tick", tick | {"event_id": "x" * 10_000}, "event_id is 10000 characters long (at most 256)"),
        ("md.ticks", "tick", tick | {"event_id": "t-sym", "symbol": "S" * 65}, "symbol is 65 characters long"),
        ("md.bars.1m", "bar", bar | {"event_id": "b-nan", "close": math.nan}, "close is nan"),
        ("md.bars.1m", "bar", bar | {"event_id": "b-hl", "high": 1.0, "low": 2.0}, "high 1.0 is below low 2.0"),
        ("trading.orders", "order", order | {"event_id": "o-nan", "quantity": math.nan}, "quantity is nan"),
        (
            "trading.orders",
            "order",
            order | {"event_id": "o-zero", "quantity": 0.0},
            "quantity is 0.0: must be positive",
        ),
        ("trading.orders", "order", order | {"event_id": "o-acct", "account": "nobody"}, "unknown account 'nobody'"),
        ("trading.fills", "fill", fill | {"event_id": "f-nan", "price": math.nan}, "price is nan"),
        ("trading.fills", "fill", fill | {"event_id": "f-fee", "commission": -1.0}, "commission is -1.0"),
        (
            "ml.predictions",
            "prediction",
            pred | {"event_id": "p-nan", "features": {"x": math.nan}},
            "features.x holds nan",
        ),
        ("ml.predictions", "prediction", pred | {"event_id": "p-p", "p_up": 1.5}, "p_up is 1.5: must be in [0, 1]"),
    ]


def test_invalid_values_and_null_values_are_dead_lettered_never_stored(pg_settings):
    s = pg_settings
    bad = _bad_events()
    topics = sorted({t for t, *_ in bad})
    kafka_clients.ensure_topics(s, topics + ["dlq.postgres", "trading.positions"])
    ends = {}
    for topic, kind, rec, _ in bad:
        ends = merge(ends, produce(s, topic, kind, [event(kind, 50), rec]))
    ends = merge(ends, produce(s, "md.ticks", "tick", [], raw=[(b"AAPL", None)]))  # a null value
    # a tombstone of a compacted topic is no poison: skipped
    ends = merge(ends, produce(s, "trading.positions", "position", [], raw=[(b"paper|AAPL", None)]))
    assert run_until_committed(SinkRunner(s, PostgresWriter(s), topics + ["trading.positions"]), ends) == 0

    dead = read_topic(s, s.topic("dlq.postgres"), 100, timeout=5)
    reasons = sorted(headers(m)["ticktape.error"].decode() for m in dead)
    want = sorted([r for *_, r in bad] + ["empty message"])
    assert len(reasons) == len(want)
    assert all(got.startswith(w) for got, w in zip(reasons, want)), reasons
    with psycopg.connect(s.database_url) as conn:
        for table in ("ticks", "bars", "orders", "fills", "predictions"):
            stored = [r[0] for r in conn.execute(f"SELECT event_id FROM {table}")]
            assert len(stored) == 1 and not any(e.startswith(("t-", "b-", "o-", "f-", "p-")) for e in stored), table
        assert conn.execute("SELECT count(*) FROM positions").fetchone()[0] == 0


def test_the_execution_stage_fills_no_invalid_order(settings, tmp_path):
    kafka_clients.ensure_topics(
        settings, ["md.ticks", "trading.orders", "trading.fills", "trading.account", "dlq.trading"]
    )
    t0 = 1_767_225_600_000_000
    order = event("order", 1, symbol="AAPL", ts=t0)  # a BUY of 10
    bad = [order | {"event_id": "o-nan", "quantity": math.nan}, order | {"event_id": "o-acct", "account": "nobody"}]
    prod = kafka_clients.producer(settings)
    for o in [*bad, order]:
        prod.produce(settings.topic("trading.orders"), key=b"AAPL", value=serde.encode("order", o), partition=0)
    for i in range(1, 4):  # market data after the orders
        tick = event("tick", i, symbol="AAPL", ts=t0 + i * 1_000_000)
        prod.produce(settings.topic("md.ticks"), key=b"AAPL", value=serde.encode("tick", tick), partition=0)
    assert prod.flush(30) == 0
    worker = Worker(settings, tmp_path / "worker.log", WORKER_STAGES="execution", EXEC_MARKET_DATA="ticks")
    try:
        fills = [serde.decode(m.value())[1] for m in read(settings, "trading.fills", 1, quiet=3.0)[0]]
        assert [(f["order_id"], f["quantity"]) for f in fills] == [(order["event_id"], 10.0)], worker.log_tail()
        dead = sorted(headers(m)["ticktape.error"].decode() for m in read(settings, "dlq.trading", 2)[0])
        assert dead[0].startswith("quantity is nan") and dead[1].startswith("unknown account 'nobody'")
    finally:
        rc = worker.stop()
    assert rc == 0, worker.log_tail()

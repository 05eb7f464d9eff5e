"""TickBatch messages: the format (round trip, the bar stage's column reader against
fastavro, corrupt bodies), the producer core's batcher, and every consumer expanding
them back into exactly the ticks: the PostgreSQL sink, `ticktape topics tail`, replay."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import struct
import time
from collections import defaultdict

import fastavro
import psycopg
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from producers.base import EventPublisher
from producers.replay import read_topic
from sink_events import run_until_committed
from sinks import schema
from sinks.postgres import PostgresWriter
from sinks.runner import SinkRunner
from ticktape import kafka_clients
from ticktape.cli import main
from ticktape.core.sim import MarketSimulator
from ticktape.core.tickbatch import MAX_TICKS, TickBatcher, events_of, expand, make_batch
from ticktape.core.trading import iso
from ticktape.serde import SINGLE_OBJECT_MAGIC, Serde, SerdeError, catalog

T0 = 1_767_225_600_000_000
SYMBOLS = ["AAPL", "MSFT", "NVDA", "BRK-B"]
serde = Serde()


def sim_ticks(n: int, rate: float = 2000.0, symbols=SYMBOLS) -> list[dict]:
    sim = MarketSimulator(symbols, seed=3, tick_rate=rate, start_us=T0)
    out = []
    while len(out) < n:
        out.extend(sim.next_chunk())
    return out[:n]


def tick(i: int, **kw) -> dict:
    return {
        "event_id": f"x:AAPL:{i}",
        "symbol": "AAPL",
        "ts": T0 + i,
        "source": "x",
        "seq": i,
        "price": 10.0 + i,
        "size": 1.0,
        "bid": None,
        "ask": 11.0,
        "bid_size": None,
        "ask_size": 2.0,
    } | kw


# --- the format ---------------------------------------------------------------------------


def test_batch_round_trip_and_trade_columns():
    ticks = [t for t in sim_ticks(400) if t["symbol"] == "MSFT"][:60]
    ticks[3] = ticks[3] | {"price": None, "size": None}  # a quote
    ticks[5] = ticks[5] | {"price": math.inf}  # invalid trades travel as they are
    batch = make_batch(ticks)
    assert batch["event_id"] == f"{ticks[0]['event_id']}+60" and batch["ts"] == ticks[-1]["ts"]
    data = serde.encode("tick_batch", batch)
    assert data[:2] == SINGLE_OBJECT_MAGIC and data[2:10] == catalog().latest("tick_batch").fingerprint
    event_type, record = serde.decode(data)
    assert event_type == "tick_batch" and expand(record) == ticks
    assert events_of(event_type, record) == ticks
    assert serde.decode_trades(data) == (
        "tick_batch",
        "MSFT",
        [t["ts"] for t in ticks],
        [t["price"] for t in ticks],
        [t["size"] for t in ticks],
    )
    single = serde.encode("tick", ticks[0])
    assert serde.decode_trades(single) == ("tick", "MSFT", [ticks[0]["ts"]], [ticks[0]["price"]], [ticks[0]["size"]])
    assert serde.decode_trades(
        serde.encode(
            "bar",
            {
                "event_id": "b",
                "symbol": "MSFT",
                "interval": "1s",
                "ts": T0,
                "window_start": T0,
                "window_end": T0,
                "open": 1.0,
                "high": 1.0,
                "low": 1.0,
                "close": 1.0,
                "volume": 1.0,
                "vwap": 1.0,
                "trade_count": 1,
            },
        )
    )[1:] == (None, [], [], [])


def test_a_batch_is_plain_avro_for_any_reader():
    schema = fastavro.parse_schema(json.loads(catalog().latest("tick_batch").path.read_text()))
    data = serde.encode("tick_batch", make_batch([tick(1), tick(2)]))
    plain = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema)
    assert plain["symbol"] == "AAPL" and plain["ticks"]["price"] == [11.0, 12.0]
    assert plain["ticks"]["event_id"] == ["x:AAPL:1", "x:AAPL:2"]


optional = st.one_of(st.none(), st.floats(allow_nan=False))


# any long, or one whose varint is 8 bytes (a microsecond time of this century is): a
# column of those alone takes the reader's fast path
eight_byte_varint = st.one_of(st.integers(1 << 48, (1 << 55) - 1), st.integers(-(1 << 55), -(1 << 48) - 1))
any_long = st.integers(-(1 << 63), (1 << 63) - 1)


@hsettings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(st.tuples(any_long, optional, optional), min_size=1, max_size=300),
        st.lists(st.tuples(eight_byte_varint, optional, optional), min_size=1, max_size=300),
        st.lists(
            st.tuples(eight_byte_varint, st.floats(allow_nan=False), st.floats(allow_nan=False)),
            min_size=1,
            max_size=300,
        ),
    ),
    st.text(min_size=1, max_size=8),
)
def test_column_reader_equals_fastavro(rows, symbol):
    ticks = [tick(i, symbol=symbol, ts=ts, price=p, size=z) for i, (ts, p, z) in enumerate(rows)]
    data = serde.encode("tick_batch", make_batch(ticks))
    _, record = serde.decode(data)  # fastavro
    cols = record["ticks"]
    assert serde.decode_trades(data) == ("tick_batch", symbol, cols["ts"], cols["price"], cols["size"])


@hsettings(max_examples=300, deadline=None)
@given(any_long, optional, optional, st.text(min_size=1, max_size=8), st.text(max_size=8), any_long)
def test_tick_reader_equals_fastavro(ts, price, size, symbol, source, seq):
    data = serde.encode("tick", tick(1, symbol=symbol, ts=ts, price=price, size=size, source=source, seq=seq))
    _, record = serde.decode(data)  # fastavro
    assert serde.decode_trades(data) == ("tick", symbol, [record["ts"]], [record["price"]], [record["size"]])


@pytest.mark.parametrize("cut", [11, 20, 30, 40, 50])
def test_corrupt_ticks_are_serde_errors(cut):
    data = serde.encode("tick", tick(1, source="a-longer-source"))
    with pytest.raises(SerdeError, match="corrupt tick body"):
        serde.decode_trades(data[:cut])


def test_a_tick_with_an_overlong_string_is_a_serde_error():
    data = serde.encode("tick", tick(1, source="s" * 10_000))
    with pytest.raises(SerdeError, match="source is 10000 characters long"):
        serde.decode(data)
    with pytest.raises(SerdeError, match="source is 10000 characters long"):
        serde.decode_trades(data)


def _long(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(text: str) -> bytes:
    return _long(len(text.encode())) + text.encode()


def test_column_reader_takes_arrays_in_several_blocks():
    """Avro writers may cut an array into blocks, with a byte size after a negative count."""
    ts = [T0, T0 + 1, T0 + 2]
    price = [1.5, None, 2.5]
    body = (
        _string("e+3")
        + _string("KO")
        + _long(T0 + 2)
        + _string("x")
        + _long(2)
        + b"".join(map(_long, ts[:2]))
        + _long(-1)
        + _long(len(_long(ts[2])))
        + _long(ts[2])
        + _long(0)
        + _long(1)
        + b"\x02"
        + struct.pack("<d", 1.5)
        + _long(2)
        + b"\x00\x02"
        + struct.pack("<d", 2.5)
        + _long(0)
        + _long(3)
        + b"\x02"
        + struct.pack("<d", 7.0)
        + b"\x00\x02"
        + struct.pack("<d", 8.0)
        + _long(0)
    )
    rest = b"".join(_long(0) for _ in range(6))  # bid, ask, bid_size, ask_size, seq, event_id: empty
    data = SINGLE_OBJECT_MAGIC + catalog().latest("tick_batch").fingerprint + body + rest
    assert serde.decode_trades(data) == ("tick_batch", "KO", ts, price, [7.0, None, 8.0])


@pytest.mark.parametrize("cut", [12, 30, 60, 100])
def test_corrupt_batches_are_serde_errors(cut):
    data = serde.encode("tick_batch", make_batch([tick(i) for i in range(20)]))
    with pytest.raises(SerdeError, match="corrupt tick_batch"):
        serde.decode_trades(data[:cut])


def test_columns_of_different_lengths_are_refused():
    batch = make_batch([tick(1), tick(2)])
    batch["ticks"]["size"] = [1.0]
    data = serde.encode("tick_batch", batch)
    with pytest.raises(SerdeError, match="different lengths"):
        serde.decode_trades(data)
    with pytest.raises(ValueError, match="columns of lengths"):
        expand(serde.decode(data)[1])


def test_make_batch_refuses_mixed_symbols_and_sizes():
    with pytest.raises(ValueError, match="one symbol"):
        make_batch([tick(1), tick(2, symbol="KO")])
    with pytest.raises(ValueError, match="1 to"):
        make_batch([])
    with pytest.raises(ValueError, match="2 to"):
        TickBatcher(MAX_TICKS + 1, 10)


# --- the batcher --------------------------------------------------------------------------


def test_batcher_groups_by_symbol_and_sends_on_size_event_time_and_wall_time():
    b = TickBatcher(3, linger_ms=10)  # 10 ms = 10,000 µs
    assert b.add("t", tick(0), now=0.0) == []
    assert b.add("t", tick(1, symbol="KO"), now=0.001) == []
    assert b.add("t", tick(2), now=0.002) == []
    full = b.add("t", tick(3), now=0.003)
    assert [(topic, [t["seq"] for t in ts]) for topic, ts in full] == [("t", [0, 2, 3])]
    assert b.due(0.0105) == []  # started at 0.001: due at 0.011
    assert b.due(0.0115) == [("t", [tick(1, symbol="KO")])]
    b.add("t", tick(4), now=1.0)
    b.add("t", tick(5, symbol="KO"), now=1.0)
    late = b.add("t", tick(6, symbol="V", ts=T0 + 5 + 10_000), now=1.0)  # event time ran 10 ms ahead
    assert [[t["seq"] for t in ts] for _, ts in late] == [[4], [5]]
    assert len(b) == 1 and [[t["seq"] for t in ts] for _, ts in b.drain()] == [[6]] and len(b) == 0


def test_batcher_wall_linger():
    b = TickBatcher(100, linger_ms=10)
    b.add("t", tick(0), now=0.0)
    b.add("t", tick(1, symbol="KO"), now=0.005)
    assert b.due(0.0099) == []
    assert [[t["seq"] for t in ts] for _, ts in b.due(0.0101)] == [[0]]
    assert [[t["seq"] for t in ts] for _, ts in b.due(0.02)] == [[1]]


def per_symbol(ticks):
    out = defaultdict(list)
    for t in ticks:
        out[t["symbol"]].append(t)
    return dict(out)


def publish_batched(s, ticks, max_ticks=50, linger_ms=200) -> EventPublisher:
    s = dataclasses.replace(s, tick_batch_max=max_ticks, tick_batch_ms=linger_ms)
    kafka_clients.ensure_topics(s, ["md.ticks"])
    pub = EventPublisher(s)
    for t in ticks:
        pub.publish("md.ticks", "tick", t)
    pub.close()
    return pub


def all_messages(s, topic="md.ticks", idle_s: float = 1.0):
    """Every message of a topic, read until nothing came for ``idle_s`` (no group join)."""
    cons = kafka_clients.consumer(s, "unused")
    cons.assign(
        [TopicPartition(s.topic(topic), p, OFFSET_BEGINNING) for p in range(kafka_clients.topic_spec(topic).partitions)]
    )
    out, last = [], time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            for m in cons.consume(1000, 0.1):
                if not m.error():
                    out.append(m)
                    last = time.monotonic()
    finally:
        cons.close()
    return out


def test_publisher_sends_batches_that_expand_to_exactly_the_ticks(settings):
    ticks = sim_ticks(1000, rate=20_000.0)
    pub = publish_batched(settings, ticks)
    assert pub.delivered == pub.sent == 1000 and pub.failed == 0
    msgs = all_messages(settings)
    kinds = [serde.decode(m.value())[0] for m in msgs]
    assert kinds.count("tick_batch") >= 15 and len(msgs) < 100  # 1000 ticks of 4 symbols, 50 a batch
    got = []
    for m in msgs:
        event_type, record = serde.decode(m.value())
        expanded = events_of(event_type, record)
        assert {t["symbol"] for t in expanded} == {m.key().decode()}  # key = symbol still
        got.extend(expanded)
    assert per_symbol(got) == per_symbol(ticks)  # every tick once, each symbol in order


def test_tail_prints_the_ticks_of_a_batch(settings, capsys, monkeypatch):
    ticks = [tick(i) for i in range(7)]
    publish_batched(settings, ticks, max_ticks=5)
    for k, v in {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "TOPIC_PREFIX": settings.topic_prefix,
    }.items():
        monkeypatch.setenv(k, v)
    assert main(["topics", "tail", "md.ticks", "--from-beginning", "--idle-timeout", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [t | {"ts_iso": iso(t["ts"])} for t in ticks]  # tail adds the ISO-8601 time
    assert [json.loads(line) for line in lines] == shown
    assert main(["topics", "tail", "md.ticks", "--from-beginning", "--count", "3"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == shown[:3]


def test_postgres_sink_stores_each_tick_of_a_batch_once(settings, fresh_db):
    s = dataclasses.replace(settings, database_url=fresh_db, sink_batch_size=50, sink_max_latency_ms=100)
    schema.migrate(s)
    ticks = sim_ticks(600, rate=20_000.0)
    publish_batched(s, ticks)
    ends = {}
    for m in all_messages(s):
        ends[(m.topic(), m.partition())] = max(ends.get((m.topic(), m.partition()), 0), m.offset() + 1)
    for group in ("g1", "g2"):  # a second group = every batch delivered again
        assert run_until_committed(SinkRunner(s, PostgresWriter(s), ["md.ticks"], group=group), ends) == 0
    with psycopg.connect(fresh_db) as conn:
        stored = conn.execute("SELECT event_id, price FROM ticks ORDER BY event_id").fetchall()
    assert stored == sorted((t["event_id"], t["price"]) for t in ticks)


def test_replay_cuts_a_batch_at_the_range(settings):
    ticks = [tick(i, ts=T0 + i * 1000) for i in range(10)]
    publish_batched(settings, ticks, max_ticks=10, linger_ms=10_000)
    topic = settings.topic("md.ticks")
    recs = list(read_topic(settings, topic, T0 + 2000, T0 + 6000, idle_s=0.5))
    assert len(recs) == 1
    event_type, record = serde.decode(recs[0].value)
    assert event_type == "tick_batch" and expand(record) == ticks[2:7] and recs[0].ts == T0 + 6000
    decoded = list(read_topic(settings, topic, T0 + 8000, None, idle_s=0.5, decode=True))
    assert [r.event for r in decoded] == ticks[8:] and [r.value for r in decoded] == [None, None]
    whole = list(read_topic(settings, topic, None, None, idle_s=0.5))
    assert len(whole) == 1 and serde.decode(whole[0].value)[1] == make_batch(ticks)

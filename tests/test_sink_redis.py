"""The Redis sink on a real broker and a real Redis: the latest state per key, with TTLs,
under the run's prefix, never rolled back by an older or redelivered event."""

from __future__ import annotations

import dataclasses
import json

import redis

from sink_events import T0, event, merge, produce, run_until_committed
from sinks import redis_sink
from sinks.redis_sink import RedisWriter, latest_state, state_key
from sinks.runner import Item, SinkRunner
from ticktape import kafka_clients


def test_latest_state_keeps_the_newest_event_per_key():
    older = event("tick", 1, symbol="AAPL", ts=T0 + 5)
    newer = event("tick", 2, symbol="AAPL", ts=T0 + 9)
    other = event("bar", 3, symbol="AAPL", interval="1s")
    got = latest_state("bt.r1.", [Item(None, "tick", newer), Item(None, "tick", older), Item(None, "bar", other)])
    assert sorted(got) == ["bt.r1.ticktape:bar:1s:AAPL", "bt.r1.ticktape:tick:AAPL"]
    ts, fields = got["bt.r1.ticktape:tick:AAPL"]
    assert ts == T0 + 9 and fields["event_id"] == newer["event_id"] and fields["ask_size"] == ""
    assert state_key("", "position", event("position", 1, symbol="KO")) == "ticktape:position:paper:KO"
    assert state_key("", "equity", event("equity", 1)) == "ticktape:portfolio:paper"


def test_latest_state_per_symbol_with_ttl_and_no_rollback(settings, fresh_redis):
    s = dataclasses.replace(settings, redis_url=fresh_redis, redis_ttl_s=600, sink_max_latency_ms=100)
    topics = redis_sink.topics()
    assert topics == [
        "md.ticks",
        "md.bars.1s",
        "md.bars.1m",
        "analytics.indicators",
        "ml.predictions",
        "trading.positions",
        "trading.equity",
        "trading.risk",
    ]
    kafka_clients.ensure_topics(s, topics)
    ticks = [event("tick", i) for i in range(80)]  # 10 per symbol, increasing ts
    stale = event("tick", 999, symbol="AAPL", ts=T0)  # older than AAPL's latest, produced last
    ends = merge(
        produce(s, "md.ticks", "tick", ticks + [stale]),
        produce(s, "md.bars.1m", "bar", [event("bar", i, symbol="MSFT") for i in range(5)]),
        produce(s, "md.bars.1s", "bar", [event("bar", i, symbol="MSFT", interval="1s") for i in range(5)]),
        produce(
            s, "analytics.indicators", "indicator_set", [event("indicator_set", i, symbol="NVDA") for i in range(4)]
        ),
        produce(s, "ml.predictions", "prediction", [event("prediction", i, symbol="NVDA") for i in range(4)]),
        produce(s, "trading.positions", "position", [event("position", i, symbol="KO") for i in range(3)]),
        produce(s, "trading.equity", "equity", [event("equity", i) for i in range(3)]),
    )
    assert run_until_committed(SinkRunner(s, RedisWriter(s), topics), ends) == 0

    r = redis.Redis.from_url(fresh_redis, decode_responses=True)
    p = s.topic_prefix
    keys = sorted(r.keys("*"))
    assert all(k.startswith(p + "ticktape:") for k in keys)
    assert len(keys) == 8 + 2 + 2 + 2  # ticks per symbol, 2 bar intervals, indicators+prediction, position+portfolio
    for sym_i, sym in enumerate(["AAPL", "MSFT", "NVDA", "TSLA", "JPM", "XOM", "KO", "V"]):
        last = ticks[72 + sym_i]
        h = r.hgetall(f"{p}ticktape:tick:{sym}")
        assert h["event_id"] == last["event_id"] and h["ts"] == str(last["ts"]) and h["price"] == str(last["price"])
        assert h["ask_size"] == ""
    assert r.hget(f"{p}ticktape:bar:1m:MSFT", "event_id") == event("bar", 4, symbol="MSFT")["event_id"]
    assert r.hget(f"{p}ticktape:bar:1s:MSFT", "event_id") == event("bar", 4, symbol="MSFT", interval="1s")["event_id"]
    assert r.hget(f"{p}ticktape:indicators:1m:NVDA", "rsi_14") == "55.5"
    pred = r.hgetall(f"{p}ticktape:prediction:NVDA")
    assert pred["event_id"] == "prediction-1m-3" and json.loads(pred["features"]) == event("prediction", 3)["features"]
    assert r.hget(f"{p}ticktape:position:paper:KO", "quantity") == "2.0"
    assert r.hgetall(f"{p}ticktape:portfolio:paper")["cash"] == str(1e6 - 2)
    assert all(0 < r.ttl(k) <= 600 for k in keys)

    # an older event in a later batch does not roll the state back
    RedisWriter(s).write([Item(None, "tick", stale | {"event_id": "late"})])
    assert r.hget(f"{p}ticktape:tick:AAPL", "event_id") == ticks[72]["event_id"]

    # redelivery from the earliest offsets by a new group leaves the same state
    before = {k: r.hgetall(k) for k in keys}
    again = SinkRunner(s, RedisWriter(s), topics, group=s.group("sink-redis-again"))
    assert run_until_committed(again, ends) == 0
    assert {k: r.hgetall(k) for k in sorted(r.keys("*"))} == before

"""The foundation's vertical slice: a seeded simulator run through the Faust worker and
both sinks, as `ticktape run` runs them (separate processes on the real broker,
PostgreSQL and Redis).  The expected bars are the pure core's over the same ticks, per
partition in offset order."""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict

import psycopg
import pytest
import redis
from pipeline import Pipeline
from test_worker import decoded, expected_output, flush_items, produce, read

from ticktape import kafka_clients
from ticktape.core.sim import MarketSimulator
from ticktape.serde import Serde

START = 1_795_183_200_000_000  # 2026-11-20 14:00 UTC
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "JPM", "XOM"]
N_TICKS = 12_000  # 24 s of event time at 500 ticks/s

pytestmark = pytest.mark.slow


def _wait(what, predicate, status=lambda: "", timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {status()}"
        time.sleep(0.5)


def test_simulated_run_lands_exactly_in_topics_tables_and_redis(settings, fresh_db, fresh_redis, tmp_path):
    s = dataclasses.replace(settings, database_url=fresh_db, redis_url=fresh_redis)
    kafka_clients.ensure_topics(s)
    serde = Serde()
    sim = MarketSimulator(SYMBOLS, seed=11, tick_rate=500, start_us=START)
    ticks = []
    while len(ticks) < N_TICKS:
        ticks.extend(sim.next_chunk())
    ticks = ticks[:N_TICKS]
    items = [(t["symbol"].encode(), serde.encode("tick", t), None) for t in ticks]
    items += flush_items(ticks[-1]["ts"] + 3600 * 10**6)  # closes every window
    records = [serde.decode(v)[1] for _, v, _ in items]
    placed = produce(s, items)
    bars_by_topic, late, _ = expected_output(records, placed)
    assert not late  # the simulator is in order
    expected = [b for bars in bars_by_topic.values() for b in bars]
    assert len(expected) > 24 * len(SYMBOLS)

    pipe = Pipeline(s, ["worker", "sink-postgres", "sink-redis"], tmp_path)
    try:
        # topics: exactly the core's bars, per partition in order, no duplicates
        got = {}
        for interval in ("1s", "1m"):
            topic = f"md.bars.{interval}"
            want = sum(len(v) for (t, _), v in bars_by_topic.items() if t == topic)
            for partition, msgs in read(s, topic, want).items():
                got[(topic, partition)] = decoded(msgs)
        assert got == dict(bars_by_topic)

        # PostgreSQL: every tick and bar once
        with psycopg.connect(s.database_url, autocommit=True) as conn:

            def count(table):
                return conn.execute(f"SELECT count(*), count(DISTINCT event_id) FROM {table}").fetchone()

            n_ticks = len({r["event_id"] for r in records})  # the flush ticks share one id
            _wait(
                f"{n_ticks} ticks and {len(expected)} bars rows",
                lambda: count("ticks")[0] >= n_ticks and count("bars")[0] >= len(expected),
                lambda: f"ticks {count('ticks')}, bars {count('bars')}",
            )
            time.sleep(1.0)  # a duplicate written late would show now
            assert count("ticks") == (n_ticks, n_ticks)
            assert count("bars") == (len(expected), len(expected))
            rows = conn.execute(
                "SELECT event_id, open, high, low, close, volume, vwap, trade_count FROM bars"
            ).fetchall()
        assert sorted(rows) == sorted(
            (b["event_id"], b["open"], b["high"], b["low"], b["close"], b["volume"], b["vwap"], b["trade_count"])
            for b in expected
        )

        # Redis: the latest bar per symbol and interval
        last = defaultdict(dict)
        for b in sorted(expected, key=lambda b: b["window_start"]):
            last[b["interval"]][b["symbol"]] = b
        client = redis.Redis.from_url(s.redis_url, decode_responses=True)

        def redis_bars():
            return {
                (iv, sym): client.hgetall(f"{s.topic_prefix}ticktape:bar:{iv}:{sym}") for iv in last for sym in last[iv]
            }

        _wait(
            "latest bars in Redis",
            lambda: all(h.get("event_id") == last[iv][sym]["event_id"] for (iv, sym), h in redis_bars().items()),
        )
        for (iv, sym), h in redis_bars().items():
            bar = last[iv][sym]
            assert float(h["close"]) == bar["close"] and float(h["volume"]) == bar["volume"]
            assert 0 < client.ttl(f"{s.topic_prefix}ticktape:bar:{iv}:{sym}") <= s.redis_ttl_s
    finally:
        pipe.stop()
    assert {role: p.returncode for role, p in pipe.procs.items()} == {"worker": 0, "sink-postgres": 0, "sink-redis": 0}

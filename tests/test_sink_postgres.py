"""The PostgreSQL sink on a real broker and a real PostgreSQL: every topic of record
lands in its table, redelivery adds nothing, poison goes to dlq.postgres, a SIGKILL
mid-batch loses and duplicates nothing, a database outage is survived, and two
processes in one group split the work."""

from __future__ import annotations

import dataclasses
import random
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone

import psycopg
import pytest

from sink_events import (
    T0,
    TOPIC_EVENTS,
    caught_up,
    committed_offsets,
    event,
    merge,
    produce,
    read_topic,
    run_until_committed,
    spawn_sink,
    wait_for,
)
from sinks import schema
from sinks.postgres import PostgresWriter, TableWriter
from sinks.runner import SinkRunner
from sinks.tables import TABLES, topics_of_record
from ticktape import kafka_clients, metrics
from ticktape.stack import LocalStack, _as_postgres_user


@pytest.fixture
def pg_settings(settings, fresh_db):
    s = dataclasses.replace(settings, database_url=fresh_db, sink_batch_size=500, sink_max_latency_ms=100)
    schema.migrate(s)
    return s


def runner(s, topics, group=None, **kw) -> SinkRunner:
    return SinkRunner(s, PostgresWriter(s), topics, group=group, **kw)


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def event_ids(url: str, table: str) -> list[str]:
    return sorted(r[0] for r in rows(url, f"SELECT event_id FROM {table}"))


def test_every_topic_of_record_lands_and_redelivery_adds_nothing(pg_settings):
    s = pg_settings
    assert sorted(topics_of_record()) == sorted(TOPIC_EVENTS)
    kafka_clients.ensure_topics(s, list(TOPIC_EVENTS))
    produced: dict[str, list[dict]] = {}
    ends = {}
    for topic, kind in TOPIC_EVENTS.items():
        interval = topic.rsplit(".", 1)[1] if topic.startswith("md.bars.") else "1m"
        recs = [event(kind, i, interval=interval) for i in range(40)]
        produced.setdefault(TABLES[kind].name, []).extend(recs)
        ends = merge(ends, produce(s, topic, kind, recs))

    assert run_until_committed(runner(s, list(TOPIC_EVENTS)), ends) == 0
    for table, recs in produced.items():
        assert event_ids(s.database_url, table) == sorted(r["event_id"] for r in recs), table
    assert len(produced["bars"]) == 80  # 1 s and 1 min bars share one table
    # values: a tick and a prediction exactly as produced (times as timestamptz)
    t = event("tick", 7)
    got = rows(
        s.database_url,
        "SELECT symbol, (extract(epoch FROM ts) * 1e6)::bigint, seq, price, size, bid, "
        f"ask, bid_size, ask_size FROM ticks WHERE event_id = '{t['event_id']}'",
    )
    assert got == [(t["symbol"], t["ts"], t["seq"], t["price"], t["size"], t["bid"], t["ask"], 5.0, None)]
    p = event("prediction", 3)
    assert rows(
        s.database_url, f"SELECT features, p_up, horizon FROM predictions WHERE event_id = '{p['event_id']}'"
    ) == [(p["features"], p["p_up"], 5)]
    ind = event("indicator_set", 4)
    assert rows(s.database_url, f"SELECT extra, obv FROM indicators WHERE event_id = '{ind['event_id']}'") == [
        ({"range_5": 0.25, "warming_up": None}, -12.0)
    ]
    counts = {t: rows(s.database_url, f"SELECT count(*) FROM {t}")[0][0] for t in produced}

    # redelivery: a new group re-reads every offset from the earliest; nothing changes
    again = runner(s, list(TOPIC_EVENTS), group=s.group("sink-postgres-again"))
    assert run_until_committed(again, ends) == 0
    assert {t: rows(s.database_url, f"SELECT count(*) FROM {t}")[0][0] for t in produced} == counts


def test_poison_messages_go_to_the_dead_letter_topic(pg_settings):
    s = pg_settings
    kafka_clients.ensure_topics(s, ["md.ticks", "md.bars.1m", "dlq.postgres"])
    good = [event("tick", i, symbol="AAPL") for i in range(10)]
    negative = event("tick", 100, symbol="AAPL") | {"price": -5.0}
    garbage = (b"AAPL", b"\xff\xfe not avro")
    dlq_before = metrics.DLQ_MESSAGES.labels("sink-postgres", "md.ticks")._value.get()
    ends = produce(s, "md.ticks", "tick", good[:5] + [negative], raw=[garbage])
    ends = merge(ends, produce(s, "md.ticks", "tick", good[5:]))
    wrong_type = produce(s, "md.bars.1m", "tick", [event("tick", 200, symbol="AAPL")])  # a tick on a bar topic
    ends = merge(ends, wrong_type)

    assert run_until_committed(runner(s, ["md.ticks", "md.bars.1m"]), ends) == 0
    # the batch minus the poison is written, and processing continued after it
    assert event_ids(s.database_url, "ticks") == sorted(e["event_id"] for e in good)
    assert event_ids(s.database_url, "bars") == []

    dead = read_topic(s, s.topic("dlq.postgres"), 3)
    assert len(dead) == 3
    by_error = {}
    for m in dead:
        h = {k: v.decode() for k, v in m.headers()}
        assert h["ticktape.stage"] == "sink-postgres"
        by_error[h["ticktape.error"]] = (m.key(), m.value(), h)
    serde_value = {v for k, v, h in by_error.values()}
    assert garbage[1] in serde_value
    # refused at decode time (the database's CHECK would refuse it too: see test_sink_errors)
    key, value, h = by_error["price is -5.0: must not be negative"]
    assert key == b"AAPL" and h["ticktape.source.topic"] == s.topic("md.ticks")
    # the source coordinates point at the very message
    src = read_topic(
        s,
        h["ticktape.source.topic"],
        1,
        partition=int(h["ticktape.source.partition"]),
        offset=int(h["ticktape.source.offset"]),
    )
    assert [m.value() for m in src] == [value]
    assert any(e.startswith("not an Avro event") for e in by_error)
    assert any(e == "a tick event on a topic of bar events" for e in by_error)
    assert metrics.DLQ_MESSAGES.labels("sink-postgres", "md.ticks")._value.get() - dlq_before == 2


def _count(url, table="ticks") -> int:
    return rows(url, f"SELECT count(*) FROM {table}")[0][0]


def test_a_replay_into_a_compressed_chunk_adds_only_the_new_rows(pg_settings):
    """TimescaleDB: a batch of stored and new ticks reaching a compressed chunk (the
    staging path deletes the stored ones first, sinks/postgres.py) and an uncompressed one."""
    url = pg_settings.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
            pytest.skip("timescaledb is not available on this PostgreSQL: no compressed chunks")
        day = 86_400_000_000
        tick = TABLES["tick"]
        stored = [tick.row(event("tick", i, ts=T0 + i * 10_000_000)) for i in range(3000)]  # day 1
        later = [tick.row(event("tick", 5000 + i, ts=T0 + day + i * 1_000_000)) for i in range(100)]  # day 2
        late = [tick.row(event("tick", 9000 + i, ts=T0 + 5_000_000 + i * 10_000_000)) for i in range(200)]
        tw = TableWriter(conn, tick)
        with conn.transaction(), conn.cursor() as cur:
            assert tw.write(cur, stored + later) == 3100
        chunks = conn.execute(
            "SELECT compress_chunk(c) FROM show_chunks('ticks', older_than => %s::timestamptz) c",
            (datetime.fromtimestamp((T0 + day) / 1e6, timezone.utc),),
        ).fetchall()
        assert len(chunks) == 1
        batch = stored[::3] + late + later[::2]  # 1000 + 50 stored, 200 new
        with conn.transaction(), conn.cursor() as cur:
            assert tw.write(cur, batch) == 200
        with conn.transaction(), conn.cursor() as cur:
            assert tw.write(cur, batch) == 0
        assert conn.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() == (3300, 3300)
        # the stored rows stayed compressed: only the new ones are in the chunk's row store
        assert conn.execute(f"SELECT count(*) FROM ONLY {chunks[0][0]}").fetchone() == (200,)


def test_sigkill_mid_batch_then_restart_leaves_exactly_the_topic(pg_settings, tmp_path):
    s = pg_settings
    kafka_clients.ensure_topics(s, ["md.ticks"])
    n = 24_000
    recs = [event("tick", i) for i in range(n)]
    ends = produce(s, "md.ticks", "tick", recs)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    log = tmp_path / "sink.log"
    env = {"SINK_BATCH_SIZE": 400, "SINK_MAX_LATENCY_MS": 200}
    kills = 0
    for _ in range(3):
        before = _count(s.database_url)
        proc = spawn_sink(s, "postgres", ["md.ticks"], log, **env)
        try:
            # kill while it writes: after it made progress, at a random moment
            wait_for(
                lambda before=before, proc=proc: _count(s.database_url) > before or proc.poll() is not None,
                60,
                "progress",
            )
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.kill()
            proc.wait(10)
        kills += 1
        if _count(s.database_url) >= n:
            break
    assert kills >= 2 or _count(s.database_url) < n, f"seed {seed}: finished before the second kill"
    assert 0 < _count(s.database_url), log.read_text()[-2000:]

    joins = log.read_text().count("sink-postgres assigned")
    proc = spawn_sink(s, "postgres", ["md.ticks"], log, **env)
    try:
        group = s.group("sink-postgres")
        # the kills may have left everything committed already: SIGTERM only once the
        # restarted sink runs its loop (before that it has no handler and dies of it)
        wait_for(lambda: log.read_text().count("sink-postgres assigned") > joins, 60, "the restarted sink to join")
        wait_for(
            lambda: committed_offsets(s, group, ends) == ends, 90, "the restarted sink to commit all", interval=0.5
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    ids = rows(s.database_url, "SELECT event_id, count(*) FROM ticks GROUP BY event_id")
    assert len(ids) == n and all(c == 1 for _, c in ids), f"seed {seed}"
    assert sorted(i for i, _ in ids) == sorted(r["event_id"] for r in recs)


def test_two_processes_in_one_group_split_the_partitions(pg_settings, tmp_path):
    s = pg_settings
    topics = ["md.ticks", "md.bars.1m"]
    kafka_clients.ensure_topics(s, topics)
    ticks = [event("tick", i) for i in range(3000)]
    bars = [event("bar", i) for i in range(600)]
    ends = merge(produce(s, "md.ticks", "tick", ticks), produce(s, "md.bars.1m", "bar", bars))
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [spawn_sink(s, "postgres", topics, lg, SINK_BATCH_SIZE=200) for lg in logs]
    try:
        group = s.group("sink-postgres")
        wait_for(lambda: committed_offsets(s, group, ends) == ends, 90, "both sinks to commit all", interval=0.5)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(30) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    # each process ended up owning a share of the partitions
    finals = []
    for lg in logs:
        assigned = [ln for ln in lg.read_text().splitlines() if "sink-postgres assigned" in ln]
        assert assigned, lg.read_text()[-2000:]
        finals.append(assigned[-1].split("assigned ", 1)[1])
    assert all(f != "nothing" for f in finals) and finals[0] != finals[1], finals
    assert event_ids(s.database_url, "ticks") == sorted(e["event_id"] for e in ticks)
    assert event_ids(s.database_url, "bars") == sorted(e["event_id"] for e in bars)


@pytest.mark.parametrize("outage_s", [4, pytest.param(30, marks=pytest.mark.slow)])
def test_database_outage_is_retried_reported_and_caught_up(services, settings, tmp_path, outage_s):
    own = LocalStack(tmp_path / "pg")
    url = own.up(kafka=False, postgres=True, redis=False)["DATABASE_URL"]
    r = thread = None
    try:
        s = dataclasses.replace(settings, database_url=url, sink_batch_size=300, sink_max_latency_ms=100)
        schema.migrate(s)
        kafka_clients.ensure_topics(s, ["md.ticks"])
        first = [event("tick", i) for i in range(500)]
        second = [event("tick", i) for i in range(500, 1500)]
        r = runner(s, ["md.ticks"])
        thread = threading.Thread(target=r.run, daemon=True)
        thread.start()
        ends1 = produce(s, "md.ticks", "tick", first)
        wait_for(lambda: caught_up(r, ends1), 60, "the first batch")

        data = own.state()["postgres"]["data"]
        subprocess.run(
            _as_postgres_user(["pg_ctl", "-D", data, "-m", "fast", "-w", "stop"]), check=True, capture_output=True
        )
        down_at = time.monotonic()
        ends2 = produce(s, "md.ticks", "tick", second)
        wait_for(lambda: not r.healthy, 30, "the sink to report unhealthy")
        assert metrics.SINK_HEALTHY.labels("postgres")._value.get() == 0
        time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
        # nothing of the second lot could be committed while the database was down
        assert not r.healthy and not any(r.committed.get(k, 0) >= v for k, v in ends2.items())
        own.up(kafka=False, postgres=True, redis=False)
        wait_for(lambda: caught_up(r, merge(ends1, ends2)), 60, "catch-up after the outage")
        assert r.healthy and metrics.SINK_HEALTHY.labels("postgres")._value.get() == 1
        r.stop()
        thread.join(30)
        assert event_ids(url, "ticks") == sorted(e["event_id"] for e in first + second)
    finally:
        if thread is not None:  # a failed run too: its consumer must not outlive the test's topics
            r.stop()
            thread.join(30)
        own.down()

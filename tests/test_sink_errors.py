"""What the PostgreSQL sink does with each SQLSTATE class it names (sinks/postgres.py), on
a real PostgreSQL: a row error (22, 23, 54) dead-letters the row and writes the rest;
an outage (40, 53, 55, 57; 08 and a lost connection in test_sink_postgres's outage
test) is retried until the batch goes through; anything else (42) and a bug in the code
stop the sink with one line, nothing committed."""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import threading
import time

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sink_events import caught_up, event, produce, read_topic, wait_for

from sinks import schema
from sinks.postgres import PostgresWriter
from sinks.runner import EXIT_BUG, Item, SinkRunner
from ticktape import kafka_clients, metrics


@pytest.fixture
def pg_settings(settings, fresh_db):
    s = dataclasses.replace(settings, database_url=fresh_db, sink_batch_size=200, sink_max_latency_ms=100)
    schema.migrate(s)
    kafka_clients.ensure_topics(s, ["md.ticks", "dlq.postgres"])
    return s


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for st in statements:
            conn.execute(st)


def count(url: str, table: str = "ticks") -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def start(runner: SinkRunner) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", runner.run()), daemon=True)
    thread.start()
    return thread, result


def test_row_errors_of_classes_22_23_54_are_dead_lettered_and_the_rest_written(pg_settings):
    """The writer alone (the decoder and validator would refuse these before it)."""
    s = pg_settings
    good = [event("tick", i) for i in range(5)]
    bad = {
        "22P02": ("prediction", event("prediction", 1) | {"features": {"x": math.nan}}),  # no NaN in JSON
        "23514": ("tick", event("tick", 10) | {"price": math.nan}),  # 0006: doubles are finite
        "54000": ("tick", event("tick", 11) | {"event_id": secrets.token_urlsafe(7500)}),  # over a btree entry
    }
    items = [Item(f"msg-{state}", kind, rec) for state, (kind, rec) in bad.items()]
    items += [Item(f"good-{i}", "tick", r) for i, r in enumerate(good)]
    writer = PostgresWriter(s)
    try:
        poison = writer.write(items)
    finally:
        writer.close()
    assert sorted((p.msg, p.error.split()[1]) for p in poison) == sorted((f"msg-{k}", k) for k in bad)
    assert count(s.database_url) == 5 and count(s.database_url, "predictions") == 0


@pytest.mark.parametrize("setting, sqlstate", [("lock_timeout", "55P03"), ("statement_timeout", "57014")])
def test_lock_and_statement_timeouts_are_retried_until_written(pg_settings, setting, sqlstate, caplog):
    s = pg_settings
    db = conninfo_to_dict(s.database_url)["dbname"]
    execute(s.database_url, f"ALTER DATABASE {db} SET {setting} = '300ms'")
    errors_before = metrics.SINK_ERRORS.labels("postgres")._value.get()
    runner = SinkRunner(s, PostgresWriter(s), ["md.ticks"])
    with psycopg.connect(s.database_url) as holder:
        holder.execute("LOCK TABLE ticks IN ACCESS EXCLUSIVE MODE")  # held until this transaction ends
        thread, result = start(runner)
        ends = produce(s, "md.ticks", "tick", [event("tick", i) for i in range(300)])
        wait_for(lambda: not runner.healthy, 30, "the sink to report the timeout")
        time.sleep(1.0)  # a few retries against the lock
        assert not any(runner.committed.get(k, 0) >= v for k, v in ends.items())
        holder.rollback()
    wait_for(lambda: caught_up(runner, ends), 30, "the batch after the lock is gone")
    runner.stop()
    thread.join(30)
    assert result["rc"] == 0 and runner.healthy
    assert count(s.database_url) == 300 and read_topic(s, s.topic("dlq.postgres"), 1, timeout=2) == []
    assert metrics.SINK_ERRORS.labels("postgres")._value.get() - errors_before >= 2
    assert any(sqlstate in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)


def test_a_deadlock_class_40_is_retried(pg_settings, caplog):
    s = pg_settings
    db = conninfo_to_dict(s.database_url)["dbname"]
    # the sink (not the test's session) is the deadlock's victim: it checks after 2 s
    execute(s.database_url, f"ALTER DATABASE {db} SET deadlock_timeout = '2s'")
    ticks = [event("tick", i, symbol="AAPL") for i in range(50)]
    runner = SinkRunner(s, PostgresWriter(s), ["md.ticks"])
    row = "INSERT INTO ticks (event_id, symbol, ts, source, seq) VALUES (%s, 'AAPL', to_timestamp(%s / 1e6), 's', 0)"
    with psycopg.connect(s.database_url) as other:
        other.execute("SET deadlock_timeout = '60s'")
        other.execute(row, (ticks[-1]["event_id"], ticks[-1]["ts"]))  # the sink's last row waits for this
        thread, result = start(runner)
        ends = produce(s, "md.ticks", "tick", ticks)

        def sink_waits() -> bool:
            with psycopg.connect(s.database_url, autocommit=True) as conn:
                return bool(
                    conn.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                        "'ticktape-sink-postgres' AND wait_event_type = 'Lock'"
                    ).fetchone()
                )

        wait_for(sink_waits, 30, "the sink to wait for the test's row")
        other.execute(row, (ticks[0]["event_id"], ticks[0]["ts"]))  # waits for the sink: a cycle
        other.rollback()
    wait_for(lambda: caught_up(runner, ends), 30, "the batch after the deadlock")
    runner.stop()
    thread.join(30)
    assert result["rc"] == 0 and count(s.database_url) == 50
    assert any("40P01" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)


def test_too_many_connections_class_53_is_retried(pg_settings):
    s = pg_settings
    role = f"sink_{secrets.token_hex(4)}"
    execute(
        s.database_url,
        f"CREATE ROLE {role} LOGIN PASSWORD 'pw' CONNECTION LIMIT 0",
        f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
    )
    try:
        url = make_conninfo(s.database_url, user=role, password="pw")
        limited = dataclasses.replace(s, database_url=url)
        runner = SinkRunner(limited, PostgresWriter(limited), ["md.ticks"])
        thread, result = start(runner)
        ends = produce(s, "md.ticks", "tick", [event("tick", i) for i in range(100)])
        wait_for(lambda: not runner.healthy, 30, "the sink to fail to connect")
        execute(s.database_url, f"ALTER ROLE {role} CONNECTION LIMIT -1")
        wait_for(lambda: caught_up(runner, ends), 30, "the batch once connections are allowed")
        runner.stop()
        thread.join(30)
        assert result["rc"] == 0 and count(s.database_url) == 100
    finally:
        execute(s.database_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_a_schema_the_code_does_not_match_stops_the_sink_with_one_line(pg_settings, caplog):
    s = pg_settings
    runner = SinkRunner(s, PostgresWriter(s), ["md.ticks"])
    thread, result = start(runner)
    first = produce(s, "md.ticks", "tick", [event("tick", i) for i in range(10)])
    wait_for(lambda: caught_up(runner, first), 30, "the first batch")
    execute(s.database_url, "ALTER TABLE ticks RENAME COLUMN source TO origin")  # 42703 from now on
    second = produce(s, "md.ticks", "tick", [event("tick", i) for i in range(10, 20)])
    thread.join(30)
    assert result.get("rc") == EXIT_BUG
    assert not any(runner.committed.get(k, 0) >= v for k, v in second.items() if v > first.get(k, 0))
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "UndefinedColumn" in line.getMessage() and "a retry cannot fix" in line.getMessage()
    assert "\n" not in line.getMessage()
    assert count(s.database_url) == 10 and read_topic(s, s.topic("dlq.postgres"), 1, timeout=2) == []


def test_a_bug_in_the_writer_stops_the_sink_at_once(pg_settings, caplog):
    class Broken(PostgresWriter):
        def write(self, items):
            return [item.record["no such field"] for item in items]

    s = pg_settings
    runner = SinkRunner(s, Broken(s), ["md.ticks"])
    ends = produce(s, "md.ticks", "tick", [event("tick", i) for i in range(10)])
    started = time.monotonic()
    assert runner.run() == EXIT_BUG
    assert time.monotonic() - started < 20 and runner.committed == {}
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.getMessage().startswith("sink-postgres: stopped by an error a retry cannot fix: KeyError")
    assert "test_sink_errors.py" in line.getMessage() and ends

"""An acknowledged write survives a crash: the local stack's PostgreSQL stopped with
``pg_ctl -m immediate`` (no checkpoint, no shutdown: as a power cut looks to the
database) again and again under the sink's load keeps every tick whose offset the sink
committed, so the table ends with exactly the topic's ticks."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import threading
import time

import psycopg
from sink_events import caught_up, event, produce, wait_for

from sinks import schema
from sinks.postgres import PostgresWriter
from sinks.runner import SinkRunner
from ticktape import kafka_clients
from ticktape.stack import LocalStack, _as_postgres_user

TICKS = 60_000
STOPS = 5


def stored(url: str) -> tuple[int, int]:
    """(rows, distinct event ids) of the ticks table; (-1, -1) while the database is down."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return conn.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone()
    except psycopg.OperationalError:
        return -1, -1


def test_immediate_stops_of_postgresql_lose_no_committed_tick(services, settings, tmp_path):
    own = LocalStack(tmp_path / "pg")
    url = own.up(kafka=False, postgres=True, redis=False)["DATABASE_URL"]
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    runner = thread = None
    try:
        s = dataclasses.replace(settings, database_url=url, sink_batch_size=300, sink_max_latency_ms=50)
        schema.migrate(s)
        kafka_clients.ensure_topics(s, ["md.ticks"])
        ends = produce(s, "md.ticks", "tick", [event("tick", i) for i in range(TICKS)])
        runner = SinkRunner(s, PostgresWriter(s), ["md.ticks"])
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        data = own.state()["postgres"]["data"]
        for _ in range(STOPS):
            before = max(0, stored(url)[0])
            wait_for(lambda before=before: stored(url)[0] > before + 500, 60, "the sink to write more")
            time.sleep(rng.uniform(0.0, 0.3))  # mid-batch, at a random moment
            subprocess.run(
                _as_postgres_user(["pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"]),
                check=True,
                capture_output=True,
            )
            own.up(kafka=False, postgres=True, redis=False)  # crash recovery from the WAL
        assert stored(url)[0] < TICKS, f"seed {seed}: the sink finished before the last stop"
        wait_for(lambda: caught_up(runner, ends), 120, "the sink to commit every tick")
        runner.stop()
        thread.join(30)
        assert stored(url) == (TICKS, TICKS), f"seed {seed}"
    finally:
        if runner is not None:  # a failed run too: its consumer must not outlive the test's topics
            runner.stop()
            thread.join(30)
        own.down()

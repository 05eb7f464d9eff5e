"""sinks/job_health.py: TimescaleDB background-job failures as metrics of the sink."""

from __future__ import annotations

import dataclasses
import time

import psycopg
import pytest
from prometheus_client import REGISTRY

from sinks import schema
from sinks.job_health import JobHealthExporter, job_health


def _samples(name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for m in REGISTRY.collect() for s in m.samples if s.name == name}


@pytest.fixture
def db(settings, fresh_db):
    s = dataclasses.replace(settings, database_url=fresh_db)
    schema.migrate(s)
    with psycopg.connect(fresh_db) as conn:
        tsdb = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is not None
    return s, tsdb


def test_plain_postgresql_has_no_jobs_and_no_series(db):
    s, tsdb = db
    if tsdb:
        pytest.skip("the test database has timescaledb: see the TimescaleDB test")
    with psycopg.connect(s.database_url) as conn:
        assert job_health(conn) == []
    JobHealthExporter(s.database_url).poll()
    assert _samples("ticktape_timescaledb_job_failed") == {}
    assert _samples("ticktape_timescaledb_job_failures") == {}


def test_timescaledb_jobs_are_exported_and_a_failed_run_shows(db):
    s, tsdb = db
    if not tsdb:
        pytest.skip("timescaledb is not available on this PostgreSQL: no background jobs to export")
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        policies = dict(
            conn.execute(
                "SELECT job_id::text, hypertable_name FROM timescaledb_information.jobs "
                "WHERE proc_name = 'policy_refresh_continuous_aggregate'"
            ).fetchall()
        )
        # a job whose every run fails, run by the scheduler at once
        conn.execute(
            "CREATE PROCEDURE always_fails(job int, config jsonb) LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'job health test'; END $$"
        )
        failing = str(conn.execute("SELECT add_job('always_fails', '1 hour', initial_start => now())").fetchone()[0])
    exporter = JobHealthExporter(s.database_url)
    key = (("hypertable", ""), ("job_id", failing), ("proc", "always_fails"))
    for _ in range(120):  # the scheduler runs it within seconds; a loaded machine may take longer
        exporter.poll()
        if _samples("ticktape_timescaledb_job_failed").get(key) == 1:
            break
        time.sleep(1)
    assert _samples("ticktape_timescaledb_job_failed")[key] == 1
    assert _samples("ticktape_timescaledb_job_failures")[key] == 1
    assert len(policies) == 2  # bars_1h / bars_1d refreshes are exported too
    failed = _samples("ticktape_timescaledb_job_failed")
    assert {dict(k)["job_id"] for k in failed} >= set(policies) | {failing}
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        conn.execute("SELECT delete_job(%s)", (int(failing),))
    exporter.poll()
    assert key not in _samples("ticktape_timescaledb_job_failed")

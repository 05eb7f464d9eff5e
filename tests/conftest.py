"""Shared fixtures: real services for the tests.

Services come, in order of preference, from env vars (KAFKA_BOOTSTRAP_SERVERS,
DATABASE_URL, REDIS_URL), from testcontainers when a Docker engine is reachable, or
from local processes started by ``ticktape.stack.LocalStack`` in a temporary home on
free 127.0.0.1 ports (the case on this machine and in CI).  Every test gets its own
topic prefix and, where it asks for one, its own database and Redis db, so tests never
see each other's data.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from ticktape import kafka_clients
from ticktape.config import settings as make_settings
from ticktape.stack import LocalStack, free_port

# The suite's data sit at any hour of any day: the market calendar is off unless a test
# names one (tests/test_calendar.py); commands run by tests inherit it.
os.environ.setdefault("MARKET_CALENDAR", "off")
# Most of the suite's data are of 2026-01-01 (T0), older than the default retention: on
# TimescaleDB a retention job, run at once when migrate adds it, would drop their chunks in
# the middle of a test.  No retention unless a test sets one (tests/test_migrations.py).
os.environ.setdefault("TSDB_RETENTION_TICKS", "")
os.environ.setdefault("TSDB_RETENTION_BARS", "")


def _docker_available() -> bool:
    if not (Path("/var/run/docker.sock").exists() or os.environ.get("DOCKER_HOST")):
        return False
    try:
        import docker  # noqa: F401  (testcontainers' dependency)
        import testcontainers  # noqa: F401
    except ImportError:
        return False
    try:
        import docker as docker_sdk

        docker_sdk.from_env().ping()
        return True
    except Exception:
        return False


def _containers():
    """(endpoints, stop) from testcontainers: the usual case on a user's machine."""
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    kafka = KafkaContainer("apache/kafka:3.9.0").with_kraft().start()
    pg = PostgresContainer("timescale/timescaledb:2.17.2-pg16", driver=None).start()
    rd = RedisContainer("redis:7").start()
    endpoints = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.get_bootstrap_server(),
        "DATABASE_URL": pg.get_connection_url(),
        "REDIS_URL": f"redis://{rd.get_container_host_ip()}:{rd.get_exposed_port(6379)}/0",
    }
    return endpoints, lambda: [c.stop() for c in (kafka, pg, rd)]


@pytest.fixture(scope="session")
def services():
    """KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL / REDIS_URL of real services."""
    given = {k: os.environ[k] for k in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL") if os.environ.get(k)}
    stop = None
    if len(given) < 3 and _docker_available():
        found, stop = _containers()
        endpoints = found | given
    else:
        # not under pytest's basetemp: another pytest run resets its root to mode 0700,
        # and PostgreSQL, running as the postgres user, would lose its data directory
        home = Path(tempfile.mkdtemp(prefix="ticktape-test-stack-"))
        local = LocalStack(home)
        endpoints = (
            local.up(
                kafka="KAFKA_BOOTSTRAP_SERVERS" not in given,
                postgres="DATABASE_URL" not in given,
                redis="REDIS_URL" not in given,
            )
            | given
        )
        stop = lambda: (local.down(), shutil.rmtree(home, ignore_errors=True))  # noqa: E731
    yield endpoints
    stop()


_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture
def settings(services, tmp_path):
    """Settings pointing at the test services, with a topic prefix of this test's own.

    Afterwards the prefix's topics (changelogs included) are deleted: the session's one
    broker keeps every record in memory, and its fetches slow down as they pile up, which
    made the suite's last end-to-end tests the slowest."""
    s = make_settings(
        kafka_bootstrap_servers=services["KAFKA_BOOTSTRAP_SERVERS"],
        database_url=services["DATABASE_URL"],
        redis_url=services["REDIS_URL"],
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        home=str(tmp_path),
        metrics_port=free_port(),
    )
    yield s
    topics = [t for t in kafka_clients.admin(s).list_topics(timeout=10).topics if t.startswith(s.topic_prefix)]
    if topics:
        kafka_clients.delete_topics(s, topics)


@pytest.fixture
def fresh_db(services):
    """DATABASE_URL of a new, empty database (dropped afterwards)."""
    from pipeline import new_database

    with new_database(services["DATABASE_URL"]) as url:
        yield url


@pytest.fixture
def fresh_redis(services):
    """REDIS_URL of a Redis db of this test's own, emptied before and after."""
    import redis

    base = services["REDIS_URL"].rsplit("/", 1)[0]
    url = f"{base}/{next(_redis_dbs)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()

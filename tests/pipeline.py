"""The main job's processes for a test: the same `python -m ticktape.cli` commands
`ticktape run` starts, on the test's services, topic prefix and free /metrics ports,
recorded in the test's TICKTAPE_HOME like `ticktape run` records them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ticktape import kafka_clients
from ticktape.commands.status import remove_run_files, write_run_files
from ticktape.config import REPO_ROOT, Settings
from ticktape.scrape import scrape, total
from ticktape.stack import free_port

SYMBOLS = "AAPL,MSFT,NVDA,TSLA,JPM,XOM"
COMMANDS = {
    "worker": ["process", "worker"],
    "sink-postgres": ["sink", "postgres"],
    "sink-redis": ["sink", "redis"],
    "producer": ["produce", "sim", "--rate", "300"],  # of the pipeline's symbols
}


class Pipeline:
    def __init__(
        self, s: Settings, roles: list[str], logs: Path, symbols: str = SYMBOLS, env: dict[str, str] | None = None
    ):
        from sinks import schema

        kafka_clients.ensure_topics(s)
        schema.migrate(s)
        self.s = s
        self.ports = {role: free_port() for role in roles}
        env = (
            dict(os.environ)
            | {
                "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
                "DATABASE_URL": s.database_url,
                "REDIS_URL": s.redis_url,
                "TOPIC_PREFIX": s.topic_prefix,
                "TICKTAPE_HOME": s.home,
                "PYTHONPATH": str(REPO_ROOT),
                "SYMBOLS": symbols,
                "BAR_INTERVALS": "1s,1m",
                "SINK_MAX_LATENCY_MS": "200",
            }
            | (env or {})
        )
        self.procs: dict[str, subprocess.Popen] = {}
        self._env, self._logs = env, logs
        for role in roles:
            self._start(role)
        write_run_files(s.home, [(r, self.ports[r], p.pid) for r, p in self.procs.items()])

    def _start(self, role: str) -> None:
        with open(self._logs / f"{role}.log", "ab") as log:
            self.procs[role] = subprocess.Popen(
                [sys.executable, "-m", "ticktape.cli", *COMMANDS[role]],
                cwd=REPO_ROOT,
                env=self._env | {"METRICS_PORT": str(self.ports[role])},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill_and_restart(self, role: str) -> None:
        """kill -9 (the process group: nothing of it survives), then start it again."""
        os.killpg(self.procs[role].pid, signal.SIGKILL)
        self.procs[role].wait(30)
        self._start(role)

    def scrape(self, role: str):
        return scrape(self.ports[role])

    def wait(self, role: str, name: str, at_least: float, timeout: float = 60.0, **labels) -> float:
        """Wait until a process's metric reaches ``at_least``; its value."""
        deadline = time.monotonic() + timeout
        while True:
            dead = [r for r, p in self.procs.items() if p.poll() is not None]
            assert not dead, f"{dead} exited (see the logs)"
            value = total(self.scrape(role), name, **labels)
            if value >= at_least:
                return value
            assert time.monotonic() < deadline, f"{role}: {name}{labels} = {value} < {at_least}"
            time.sleep(0.3)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        remove_run_files(self.s.home)


@contextlib.contextmanager
def new_database(admin_url: str):
    """DATABASE_URL of a new, empty database, dropped afterwards (for module-scoped
    fixtures; tests use conftest's fresh_db)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(**(conninfo_to_dict(admin_url) | {"dbname": name}))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def module_settings(services: dict, home: Path, database_url: str) -> Settings:
    from ticktape.config import settings

    return settings(
        kafka_bootstrap_servers=services["KAFKA_BOOTSTRAP_SERVERS"],
        database_url=database_url,
        redis_url=services["REDIS_URL"],
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        home=str(home),
    )

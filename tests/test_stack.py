"""`ticktape stack up|status|env|down` on a temporary home: the commands a user types."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from ticktape.config import REPO_ROOT


def tt(home, *args, check=True):
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")}
    env["TICKTAPE_HOME"] = str(home)
    res = subprocess.run(
        [sys.executable, "-m", "ticktape.cli", *args], capture_output=True, text=True, env=env, timeout=180
    )
    assert not check or res.returncode == 0, f"ticktape {' '.join(args)}: {res.stdout}{res.stderr}"
    return res


def test_stack_lifecycle_and_env(tmp_path):
    home = tmp_path / "home"
    assert tt(home, "stack", "status", check=False).returncode == 1
    try:
        up = tt(home, "stack", "up")
        assert "kafka" in up.stdout and "postgres" in up.stdout and "redis" in up.stdout
        out = tt(home, "stack", "env").stdout.strip()
        assert out.startswith("export ")
        values = dict(item.split("=", 1) for item in shlex.split(out[len("export ") :]))
        assert set(values) == {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL"}
        assert all("127.0.0.1" in v for v in values.values())

        # eval "$(ticktape stack env)" then the standard tools just work
        script = (
            f'eval "$({shlex.quote(sys.executable)} -m ticktape.cli stack env)"; '
            'psql "$DATABASE_URL" -Atc "select count(*) from schema_migrations"'
        )
        env = {**os.environ, "TICKTAPE_HOME": str(home)}
        for k in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL"):
            env.pop(k, None)
        res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
        assert res.returncode == 0, res.stderr
        assert int(res.stdout.strip()) >= 1  # the stack applied the migrations
        if shutil.which("kcat"):
            res = subprocess.run(
                [str(REPO_ROOT / "kafka" / "kcat"), "-b", values["KAFKA_BOOTSTRAP_SERVERS"], "-L"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert res.returncode == 0 and "md.ticks" in res.stdout  # the topics were created
        if shutil.which("redis-cli"):
            res = subprocess.run(
                ["redis-cli", "-u", values["REDIS_URL"], "ping"], capture_output=True, text=True, timeout=30
            )
            assert res.stdout.strip() == "PONG"
        # secrets stay out of the status output
        status = tt(home, "stack", "status").stdout
        assert values["DATABASE_URL"].split(":")[2].split("@")[0] not in status
        # up again is a no-op that keeps the same endpoints
        tt(home, "stack", "up")
        assert tt(home, "stack", "env").stdout.strip() == out
        # down and up again: PostgreSQL keeps its data (and its password)
        tt(home, "stack", "down")
        assert tt(home, "stack", "status", check=False).returncode == 1
        tt(home, "stack", "up")
        res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
        assert res.returncode == 0 and int(res.stdout.strip()) >= 1, res.stderr
    finally:
        tt(home, "stack", "down", check=False)
    assert tt(home, "stack", "status", check=False).returncode == 1


def test_env_services_win_over_the_local_stack(tmp_path, monkeypatch):
    from ticktape.config import settings

    monkeypatch.setenv("TICKTAPE_HOME", str(tmp_path))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@db.example/x?sslmode=require")
    s = settings()
    assert s.kafka_bootstrap_servers == "kafka.example:9092"
    assert s.database_url.endswith("sslmode=require")
    assert s.redacted()["DATABASE_URL"] == "postgresql://u:***@db.example/x?sslmode=require"


@pytest.mark.parametrize(
    "var, value, message",
    [
        ("SIM_SEED", "abc", "SIM_SEED='abc' is not a number"),
        ("KAFKA_LINGER_MS", "-1", "KAFKA_LINGER_MS=-1: must be at least 0"),
        ("SIM_TICK_RATE", "0", "SIM_TICK_RATE=0.0: must be more than 0"),
        ("METRICS_PORT", "70000", "METRICS_PORT=70000: must be at most 65535"),
    ],
)
def test_bad_setting_is_one_line_exit_2(var, value, message):
    res = subprocess.run(
        [sys.executable, "-m", "ticktape.cli", "config"], capture_output=True, text=True, env={**os.environ, var: value}
    )
    assert res.returncode == 2 and res.stderr.strip() == f"ticktape: error: {message}"

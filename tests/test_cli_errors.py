"""Wrong invocations, each as a user types it: one line on stderr, exit code 2, no
traceback, within 15 s (the real CLI in a subprocess; a real broker where the case
needs one that answers, closed ports where it needs one that does not)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ticktape.config import REPO_ROOT
from ticktape.stack import free_port

CLOSED = "127.0.0.1:1"

# (id, argv, env; "{broker}" is the real broker, "{closed}" a closed port, "{dir}" a temp dir; {{ }} a brace)
CASES = [
    ("nan tick rate", ["config"], {"SIM_TICK_RATE": "nan"}),
    ("infinite tick rate", ["config"], {"SIM_TICK_RATE": "inf"}),
    ("no symbols", ["config"], {"SYMBOLS": " , "}),
    ("unknown log level", ["config"], {"LOG_LEVEL": "LOUD"}),
    ("enter_p not a probability", ["config"], {"STRATEGY_ENTER_P": "7"}),
    ("unknown security protocol", ["topics", "list"], {"KAFKA_SECURITY_PROTOCOL": "BOGUS"}),
    ("unknown sasl mechanism", ["topics", "list"], {"KAFKA_SASL_MECHANISM": "MD5"}),
    ("dlq limit over 1 MB", ["config"], {"DLQ_MAX_BYTES": "2000000"}),
    ("negative count", ["produce", "sim", "--count", "-5"], {}),
    ("zero rate", ["produce", "sim", "--rate", "0"], {}),
    ("nan rate", ["produce", "sim", "--rate", "nan"], {}),
    ("negative duration", ["produce", "sim", "--duration", "-1"], {}),
    ("binary csv to indicators", ["indicators", "--input", "{dir}/bin.csv", "--output", "{dir}/out.csv"], {}),
    ("binary csv to train", ["train", "--source", "csv", "--input", "{dir}/bin.csv"], {}),
    ("header-only csv", ["indicators", "--input", "{dir}/empty.csv", "--output", "{dir}/out.csv"], {}),
    ("nan in a csv", ["indicators", "--input", "{dir}/nan.csv", "--output", "{dir}/out.csv"], {}),
    ("no broker: topics list", ["topics", "list"], {"KAFKA_BOOTSTRAP_SERVERS": "{closed}"}),
    ("no broker: topics tail", ["topics", "tail", "md.ticks"], {"KAFKA_BOOTSTRAP_SERVERS": "{closed}"}),
    ("no broker: process worker", ["process", "worker"], {"KAFKA_BOOTSTRAP_SERVERS": "{closed}"}),
    (
        "bad strategy: process worker",
        ["process", "worker"],
        {
            "KAFKA_BOOTSTRAP_SERVERS": "{broker}",
            "STRATEGY": "examples.ema_cross:EmaCross",
            "STRATEGY_PARAMS": '{{"fast": "x"}}',
        },
    ),
    (
        "unknown strategy: process worker",
        ["process", "worker"],
        {"KAFKA_BOOTSTRAP_SERVERS": "{broker}", "STRATEGY": "mine.strategies:Nope"},
    ),
    (
        "unknown indicator: process worker",
        ["process", "worker"],
        {"KAFKA_BOOTSTRAP_SERVERS": "{broker}", "INDICATORS": "mine.indicators:Nope"},
    ),
    ("no broker: produce sim", ["produce", "sim", "--count", "10"], {"KAFKA_BOOTSTRAP_SERVERS": "{closed}"}),
    ("no broker: sink postgres", ["sink", "postgres"], {"KAFKA_BOOTSTRAP_SERVERS": "{closed}"}),
    (
        "no redis: sink redis",
        ["sink", "redis"],
        {"KAFKA_BOOTSTRAP_SERVERS": "{broker}", "REDIS_URL": "redis://{closed}/0"},
    ),
    (
        "no database: sink postgres",
        ["sink", "postgres"],
        {"KAFKA_BOOTSTRAP_SERVERS": "{broker}", "DATABASE_URL": "postgresql://u:secretpw@{closed}/db"},
    ),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "bin.csv").write_bytes(bytes(range(256)) * 8)
    (d / "empty.csv").write_text("time,symbol,open,high,low,close,volume\n")
    (d / "nan.csv").write_text("time,symbol,open,high,low,close,volume\n2026-01-02T14:30:00,AAPL,1,2,1,nan,5\n")
    return d


@pytest.mark.parametrize("argv, env", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_wrong_invocation_is_one_line_and_exit_2(services, files, tmp_path, argv, env):
    fill = {"broker": services["KAFKA_BOOTSTRAP_SERVERS"], "closed": CLOSED, "dir": str(files)}
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "REDIS_"))}
    environ |= {"TICKTAPE_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT), "METRICS_PORT": str(free_port())}
    environ |= {k: v.format(**fill) for k, v in env.items()}
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "ticktape.cli", *(a.format(**fill) for a in argv)],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - started
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("ticktape: error: "), res.stderr[-2000:]
    assert "secretpw" not in res.stderr
    assert took < 15, f"{took:.1f} s"


def test_an_empty_tsdb_setting_means_keep_not_the_default(monkeypatch):
    from ticktape.config import Settings, settings

    for env in ("TSDB_RETENTION_TICKS", "TSDB_RETENTION_BARS", "TSDB_COMPRESS_AFTER"):
        monkeypatch.setenv(env, "")
    s = settings()
    assert (s.tsdb_retention_ticks, s.tsdb_retention_bars, s.tsdb_compress_after) == ("", "", "")
    monkeypatch.setenv("SIM_TICK_RATE", "")  # elsewhere an empty variable is the default
    assert settings().sim_tick_rate == Settings.sim_tick_rate


def test_the_lazy_help_lines_are_the_commands_own():
    # `ticktape --help` imports no command module: its lines must be the ones each module registers
    from ticktape import cli

    full = cli.build_parser()
    lazy = cli.build_parser(load=[])
    lines = {
        p: {a.dest: a.help for a in parser._subparsers._group_actions[0]._choices_actions}
        for p, parser in (("full", full), ("lazy", lazy))
    }
    assert lines["full"] == lines["lazy"] == cli.COMMANDS
    assert cli._command_of(["-v", "status", "--json"]) == "status" and cli._command_of(["--help"]) is None

"""The strategy, risk, execution and portfolio agents in a real worker on the real broker.

The worker runs as the pipeline runs it (``python -m ticktape.cli process worker``).  The
test publishes indicator sets, predictions and ticks per symbol — each stream in its
symbol's partition, in ts order, as the upstream stages do — and checks the trading
topics against the in-process chain (``ticktape.core.desks``) over the same events.
Bars run at 1 s only (BAR_INTERVALS=1s), so the crafted 1-minute indicator sets are the
only ones the strategy trades on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import redis
import yaml
from test_trading_desks import ENV, LIMITS_FILE, SYMBOLS, sequential, streams
from test_worker import Worker, read

from ticktape import kafka_clients
from ticktape.config import REPO_ROOT
from ticktape.core import desks
from ticktape.serde import Serde

serde = Serde()
PARTITION = {sym: i for i, sym in enumerate(SYMBOLS)}  # the symbol's partition on every symbol-keyed topic
TOPIC_OF = {"tick": "md.ticks", "indicator_set": "analytics.indicators", "prediction": "ml.predictions"}
ACCOUNT_P = desks.account_partition("paper", kafka_clients.topic_spec("trading.account").partitions)


def worker_env(tmp_path) -> dict:
    path = tmp_path / "risk.yaml"
    path.write_text(yaml.safe_dump(LIMITS_FILE))
    # the chain's events are exact only without wall-clock idleness: a loaded machine can
    # stall a partition for seconds (test_idle.py tests the bounded wait)
    return ENV | {"RISK_CONFIG": str(path), "BAR_INTERVALS": "1s", "EXEC_MARKET_DATA": "ticks", "RISK_IDLE_MS": "0"}


def publish(s, st, upto_ts=None, from_ts=None):
    """Each (input, symbol) stream to its topic and the symbol's partition, in order."""
    prod = kafka_clients.producer(s)
    errors = []
    for (kind, sym), evs in sorted(st.items()):
        topic = s.topic(TOPIC_OF[kind])
        for ev in evs:
            if (upto_ts is not None and ev["ts"] > upto_ts) or (from_ts is not None and ev["ts"] <= from_ts):
                continue
            prod.produce(
                topic,
                key=sym.encode(),
                value=serde.encode(kind, ev, topic=topic),
                partition=PARTITION[sym],
                on_delivery=lambda err, msg: errors.append(err) if err else None,
            )
    assert prod.flush(30) == 0 and not errors


def distinct(messages):
    """Decoded events in topic order, first copy of each id (a re-sent copy must be identical)."""
    first = {}
    for m in messages:
        ev = serde.decode(m.value())[1]
        assert json.dumps(first.setdefault(ev["event_id"], ev)) == json.dumps(ev)
    return list(first.values())


def output(s, topic, count, **kw):
    """{partition: distinct events} of a topic once ``count`` distinct events are there."""
    event_id = lambda v: serde.decode(v)[1]["event_id"]  # noqa: E731
    return {p: distinct(msgs) for p, msgs in read(s, topic, count, key=event_id, **kw).items()}


def per_partition(events, partition_of):
    out = {}
    for e in events:
        out.setdefault(partition_of(e), []).append(e)
    return out


def check_against_chain(s, want, worker):
    by_symbol = lambda e: PARTITION[e["symbol"]]  # noqa: E731
    for topic, kind in (("trading.orders", "order"), ("trading.orders.rejected", "rejection")):
        # generous: a restarted worker first recovers every table from its changelog, and
        # late in the suite the one test broker serves every fetch slower
        got = output(s, topic, len(want[kind]), timeout=400)
        assert got == per_partition(want[kind], by_symbol), (topic, worker.figures(), worker.log_tail())
    assert output(s, "trading.signals", len(want["signal"])) == per_partition(want["signal"], by_symbol)
    fills = output(s, "trading.fills", len(want["fill"]))
    assert sorted((json.dumps(f) for fs in fills.values() for f in fs)) == sorted(json.dumps(f) for f in want["fill"])
    for topic, kind in (
        ("trading.positions", "position"),
        ("trading.equity", "equity"),
        ("trading.risk", "risk_state"),
    ):
        got = output(s, topic, len(want[kind]))
        if got != ({ACCOUNT_P: want[kind]} if want[kind] else {}):
            g = got.get(ACCOUNT_P, [])
            i = next((i for i, (a, b) in enumerate(zip(g, want[kind])) if a != b), min(len(g), len(want[kind])))
            raise AssertionError((topic, len(g), len(want[kind]), i, g[i - 1 : i + 2], want[kind][i - 1 : i + 2]))


@pytest.mark.timeout(1200)
def test_agents_equal_the_in_process_chain_across_a_kill(settings, tmp_path):
    kafka_clients.ensure_topics(settings)
    st = streams(40)
    want = sequential(st)
    assert len(want["order"]) > 10 and want["rejection"] and len(want["position"]) > 50
    env = worker_env(tmp_path) | {"PROCESSOR_BATCH_SIZE": "20", "PROCESSOR_BATCH_MS": "20"}
    split = min(e["ts"] for e in want["order"][len(want["order"]) // 2 :])
    # 1. the first half, until some of its orders are out; then kill -9
    publish(settings, st, upto_ts=split)
    first = Worker(settings, tmp_path / "worker1.log", **env)
    try:
        assert wait_for(lambda: orders_sent(first) >= 3, timeout=90), first.log_tail()
    finally:
        first.stop(signal.SIGKILL)
    # 2. the rest to a new worker: it resumes from the tables' changelogs
    publish(settings, st, from_ts=split)
    second = Worker(settings, tmp_path / "worker2.log", **env)
    try:
        check_against_chain(settings, want, second)
        n_rej = {}
        for r in want["rejection"]:
            n_rej[r["reason_code"]] = n_rej.get(r["reason_code"], 0) + 1
        # counters of this process: what it decided after the restart (at most all of them)
        for reason, n in n_rej.items():
            try:
                assert second.metric("ticktape_risk_rejections_total", reason=reason) <= n
            except KeyError:
                pass  # all of that reason were decided before the kill
    finally:
        assert second.stop() == 0, second.log_tail()
    # every stage's table holds the next offset of each input partition it read: the end
    inputs = {
        "features": ["analytics.indicators"],
        "strategy": ["ml.predictions"],
        "risk": ["trading.account"],
        "execution": ["md.ticks", "trading.orders"],
        "portfolio": ["trading.ledger"],
    }
    for table, topics in inputs.items():
        want_offsets = {}
        for topic in topics:
            for m in kafka_clients.read_to_end(settings, settings.topic(topic), f"{settings.topic_prefix}reader"):
                want_offsets[f"@offset:{m.topic()}:{m.partition()}"] = {"offset": m.offset() + 1}
        saved = {}
        changelog = f"{settings.group('worker')}-{table}-changelog"
        for m in kafka_clients.read_to_end(settings, changelog, f"{settings.topic_prefix}reader"):
            key = json.loads(m.key())
            if key.startswith("@offset:"):
                saved[key] = json.loads(m.value())
        assert len({k.rsplit(":", 1)[0] for k in want_offsets}) == len(topics)  # every input has messages
        assert saved == want_offsets, table


def orders_sent(worker) -> float:
    total = 0.0
    for side in ("BUY", "SELL"):
        try:
            total += worker.metric("ticktape_orders_total", account="paper", side=side)
        except (OSError, KeyError):
            pass  # not up yet, or no order of that side yet
    return total


def run_cli(s, *argv, **env):
    environ = (
        os.environ
        | {
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "TOPIC_PREFIX": s.topic_prefix,
            "TICKTAPE_HOME": s.home,
            "DATABASE_URL": s.database_url,
            "REDIS_URL": s.redis_url,
            "PYTHONPATH": str(REPO_ROOT),
        }
        | env
    )
    return subprocess.run(
        [sys.executable, "-m", "ticktape.cli", *argv],
        env=environ,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def wait_for(fn, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


@pytest.mark.slow
def test_kill_switch_trips_on_falling_prices_shows_everywhere_and_reset_reopens(
    settings, fresh_db, fresh_redis, tmp_path
):
    s = dataclasses.replace(settings, database_url=fresh_db, redis_url=fresh_redis)
    kafka_clients.ensure_topics(s)
    assert run_cli(s, "db", "migrate").returncode == 0
    st = streams(40, crash_at=22)  # AAPL falls 20% a bar from bar 23 while the book is long it
    want = sequential(st)
    [halt] = want["risk_state"]
    assert (halt["trading_state"], halt["reason"]) == ("HALTED", "DAILY_LOSS_LIMIT")
    publish(s, st)
    env = worker_env(tmp_path)
    worker = Worker(s, tmp_path / "worker.log", **env)
    sink_env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "TOPIC_PREFIX": s.topic_prefix,
        "TICKTAPE_HOME": s.home,
        "DATABASE_URL": s.database_url,
        "REDIS_URL": s.redis_url,
        "PYTHONPATH": str(REPO_ROOT),
        "SINK_MAX_LATENCY_MS": "200",
    }
    sinks = [
        subprocess.Popen(
            [sys.executable, "-m", "ticktape.cli", "sink", kind],
            env=sink_env | {"METRICS_PORT": "0"},
            cwd=REPO_ROOT,
            stdout=open(tmp_path / f"sink-{kind}.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        for kind in ("postgres", "redis")
    ]
    try:
        check_against_chain(s, want, worker)
        # metrics: the kill switch, and the figures of the last fold
        assert worker.wait_metric("ticktape_kill_switch", 1, account="paper"), worker.log_tail()
        last = want["equity"][-1]
        assert worker.metric("ticktape_equity", account="paper") == last["equity"]
        assert worker.metric("ticktape_pnl", account="paper", kind="realized") == last["realized_pnl"]
        assert worker.metric("ticktape_gross_exposure", account="paper") == last["gross_exposure"]
        # Redis: the latest trading state; the database: the state change and the rejections
        rd = redis.Redis.from_url(s.redis_url, decode_responses=True)
        key = f"{s.topic_prefix}ticktape:risk:paper"
        assert wait_for(lambda: rd.hget(key, "trading_state")) == "HALTED"
        assert rd.hget(key, "reason") == "DAILY_LOSS_LIMIT"
        n_loss = sum(1 for r in want["rejection"] if r["reason_code"] == "DAILY_LOSS_LIMIT")
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            q = "SELECT count(*) FROM order_rejections WHERE reason_code = 'DAILY_LOSS_LIMIT'"
            assert wait_for(lambda: conn.execute(q).fetchone()[0] == n_loss), n_loss
            assert conn.execute("SELECT trading_state, reason, daily_pnl FROM risk_states").fetchall() == [
                ("HALTED", "DAILY_LOSS_LIMIT", halt["daily_pnl"])
            ]
        # ticktape risk status reads the live state
        status = run_cli(s, "risk", "status", "--json", **env)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert (report["trading_state"], report["halt_reason"]) == ("HALTED", "DAILY_LOSS_LIMIT")
        assert report["pending_events"] == 0 and report["open_orders"] == []
        # ticktape portfolio rebuild: positions from trading.fills alone equal the live state
        rebuilt = run_cli(s, "portfolio", "rebuild", **env)
        assert rebuilt.returncode == 0 and "rebuilt state equals the live state" in rebuilt.stdout, rebuilt.stdout
        # ticktape portfolio show: the live positions and the last equity
        shown = json.loads(run_cli(s, "portfolio", "show", "--json", **env).stdout)
        assert (shown["equity"]["equity"], shown["equity"]["cash"]) == (last["equity"], last["cash"])
        final = {p["symbol"]: p["quantity"] for p in want["position"]}  # the last Position per symbol
        assert {p["symbol"]: p["quantity"] for p in shown["positions"]} == {k: q for k, q in final.items() if q}
        text = run_cli(s, "portfolio", "show", **env).stdout
        assert text.startswith("account paper: as of ") and f"equity {last['equity']:,.2f} = cash" in text, text
        # ticktape risk reset reaches the running risk stage: ACTIVE everywhere
        reset = run_cli(s, "risk", "reset", **env)
        assert reset.returncode == 0, reset.stderr
        assert worker.wait_metric("ticktape_kill_switch", 0, account="paper"), worker.log_tail()
        assert wait_for(lambda: rd.hget(key, "trading_state") == "ACTIVE")
        assert json.loads(run_cli(s, "risk", "status", "--json", **env).stdout)["trading_state"] == "ACTIVE"
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            assert wait_for(
                lambda: (
                    conn.execute("SELECT trading_state FROM risk_states ORDER BY ts").fetchall()
                    == [("HALTED",), ("ACTIVE",)]
                )
            )
        # ticktape risk halt: the kill switch by hand
        halted = run_cli(s, "risk", "halt", **env)
        assert halted.returncode == 0, halted.stderr
        assert halted.stdout.startswith("account paper: halt sent (ctl:") and halted.stdout.endswith(
            "\naccount paper: HALTED (applied by the risk stage)\n"
        ), halted.stdout
        assert worker.wait_metric("ticktape_kill_switch", 1, account="paper"), worker.log_tail()
        assert wait_for(lambda: rd.hget(key, "reason") == "TRADING_HALTED")
        assert json.loads(run_cli(s, "risk", "status", "--json", **env).stdout)["trading_state"] == "HALTED"
        again = run_cli(s, "risk", "halt", **env)
        assert (again.returncode, again.stdout) == (0, "account paper: already HALTED: nothing sent\n")
    finally:
        for p in sinks:
            p.send_signal(signal.SIGTERM)
        for p in sinks:
            p.wait(30)
        assert worker.stop() == 0, worker.log_tail()


def test_risk_cli_usage_errors(settings):
    same = run_cli(settings, "risk", "reset")  # no state yet: ACTIVE already
    assert (same.returncode, same.stdout) == (0, "account paper: already ACTIVE (no risk state yet): nothing sent\n")
    lone = run_cli(settings, "risk", "halt", "--wait", "2")  # no worker applies it
    assert lone.returncode == 1 and lone.stdout.startswith("account paper: halt sent (ctl:"), lone.stdout
    assert lone.stderr == (
        "ticktape: risk: account paper is not HALTED after 2 s: no worker runs the risk stage? (ticktape run, or "
        f"ticktape process worker); the halt waits in {settings.topic('trading.control')} and applies when one "
        "starts\n"
    )
    bad = run_cli(settings, "risk", "reset", "--state", "HALTED")
    assert (bad.returncode, bad.stderr.strip()) == (
        2,
        "ticktape: error: argument --state: must be ACTIVE or REDUCING, got 'HALTED'",
    )
    none = run_cli(settings, "risk", "status", "--account", "nobody")
    assert none.returncode == 0 and none.stdout.startswith("account nobody: no risk state yet")

"""A live run where one symbol of ten goes quiet for two minutes (a halt, a thin name):
the others keep trading with a bounded delay, the quiet one is taken back when it
trades again, and the backtest of the recording equals what the live pipeline did."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from confluent_kafka import OFFSET_END, TopicPartition
from pipeline import Pipeline

from ticktape import backtest_kafka, kafka_clients
from ticktape.config import REPO_ROOT, settings as make_settings
from ticktape.scrape import total
from ticktape.serde import Serde
from ticktape.stack import free_port

serde = Serde()
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG", "HHH", "III", "JJJ"]
QUIET, QUIET_FROM_S, QUIET_FOR_S = "DDD", 50, 120
IDLE_MS = 5000
ENV = {
    "STRATEGY_INTERVAL": "1s",
    "EXEC_MARKET_DATA": "bars",
    "TICK_BATCH_MAX": "500",
    "TICK_BATCH_MS": "100",
    "STRATEGY_ENTER_P": "0.52",
    "STRATEGY_EXIT_P": "0.51",
    "STRATEGY_MIN_HOLD_BARS": "1",
    "RISK_IDLE_MS": str(IDLE_MS),
    "SIM_QUIET": f"{QUIET}@{QUIET_FROM_S}:{QUIET_FOR_S}",
    "SIM_SEED": "3",
    "HEARTBEAT_MS": "500",
    "KAFKA_FETCH_MAX_WAIT_MS": "20",
}


def cli(s, *argv, env=None):
    environ = (
        os.environ
        | ENV
        | {
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "DATABASE_URL": s.database_url,
            "REDIS_URL": s.redis_url,
            "TOPIC_PREFIX": s.topic_prefix,
            "TICKTAPE_HOME": s.home,
            "SYMBOLS": ",".join(SYMBOLS),
            "PYTHONPATH": str(REPO_ROOT),
            "METRICS_PORT": "0",
        }
        | (env or {})
    )
    return subprocess.run(
        [sys.executable, "-m", "ticktape.cli", *argv],
        env=environ,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_one_quiet_symbol_of_ten_holds_nothing_back_and_the_backtest_equals_live(services, fresh_db, tmp_path):
    s = make_settings(
        kafka_bootstrap_servers=services["KAFKA_BOOTSTRAP_SERVERS"],
        database_url=fresh_db,
        redis_url=services["REDIS_URL"],
        topic_prefix=f"t{os.urandom(5).hex()}.",
        home=str(tmp_path),
        metrics_port=free_port(),
    )
    from sinks import schema

    schema.migrate(s)
    trained = cli(
        s,
        "train",
        "--source",
        "sim",
        "--sim-minutes",
        "20",
        "--interval",
        "1s",
        "--horizon",
        "5",
        "--exclude",
        "sma_200_rel,sma_50_rel",
        "--activate",
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    kafka_clients.ensure_topics(s)
    orders = kafka_clients.consumer(s, f"{s.topic_prefix}orders")
    orders.assign(
        [
            TopicPartition(s.topic("trading.orders"), p, OFFSET_END)
            for p in range(kafka_clients.topic_spec("trading.orders").partitions)
        ]
    )
    pipe = Pipeline(s, ["worker", "producer"], tmp_path, symbols=",".join(SYMBOLS), env=ENV)
    seen = []  # (wall time an order was read, order)
    started = time.time()
    try:
        while time.time() < started + QUIET_FROM_S + QUIET_FOR_S + 60:
            for m in orders.consume(100, 0.2):
                if m.error() is None:
                    seen.append((time.time(), serde.decode(m.value())[1]))
            assert all(p.poll() is None for p in pipe.procs.values()), "a process exited (see the logs)"
        pipe.procs["producer"].terminate()
        assert pipe.procs["producer"].wait(30) == 0
        metrics = pipe.scrape("worker")
        tick_messages = kafka_clients.read_to_end(s, s.topic("md.ticks"), f"{s.topic_prefix}count")
        n_ticks = len(tick_messages)
        reader = backtest_kafka.Reader(s)
        settler = backtest_kafka.Settler(s, reader, pipe.ports["worker"], {"md.ticks": n_ticks})
        deadline = time.monotonic() + 300
        while not settler.settled():  # the live run has processed everything
            reader.poll(0.3)
            assert time.monotonic() < deadline and pipe.procs["worker"].poll() is None
        settler.close()
        reader.close()
    finally:
        orders.close()
        pipe.stop()

    # the quiet window: the gap in DDD's ticks (the simulator's clock starts when it is ready)
    quiet_ts = sorted(
        t
        for kind, ev in map(serde.decode, (m.value() for m in tick_messages))
        if kind != "heartbeat" and ev["symbol"] == QUIET
        for t in (ev["ticks"]["ts"] if kind == "tick_batch" else [ev["ts"]])
    )
    gap, quiet_from = max((b - a, a) for a, b in zip(quiet_ts, quiet_ts[1:]))
    assert QUIET_FOR_S * 1e6 <= gap < (QUIET_FOR_S + 2) * 1e6
    quiet_to = quiet_from + gap
    before = [(t - o["ts"] / 1e6) for t, o in seen if o["ts"] < quiet_from]
    during = [(t - o["ts"] / 1e6) for t, o in seen if quiet_from + (IDLE_MS + 2000) * 1000 < o["ts"] < quiet_to]
    assert before and len(during) >= 5, len(seen)  # the others kept trading while DDD was quiet
    assert all(o["symbol"] != QUIET for _, o in seen if quiet_from + 2e6 < o["ts"] < quiet_to)
    # decided within about RISK_IDLE_MS of when they would be without the quiet symbol, not
    # when it trades again (up to QUIET_FOR_S later); the slack is for a loaded machine
    assert max(during) <= max(before) + IDLE_MS / 1000 + 10.0, (max(before), sorted(during)[-5:])
    assert total(metrics, "ticktape_risk_idle_symbols") == 0  # DDD is back
    assert (
        total(metrics, "ticktape_risk_late_events_total") == 0
        and total(metrics, "ticktape_risk_forced_releases_total") == 0
    )
    ledger = kafka_clients.read_to_end(s, s.topic("trading.ledger"), f"{s.topic_prefix}ledger")
    marks = [serde.decode(m.value()) for m in ledger]
    assert any(k == "mark" and e["symbol"] == QUIET and e["ts"] > quiet_to for k, e in marks)  # taken back in

    done = cli(s, "backtest", "--as-run", "--check-live")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "live check: every event equals the live pipeline's" in done.stdout, done.stdout

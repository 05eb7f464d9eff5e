"""kill -9 at random moments: 12 SIGKILLs of the worker and the PostgreSQL sink during a
seeded run, for 3 seeds, leave every table (ticks through equity) exactly as the run
without kills — which is the in-process pipeline over the same ticks (the backtest core;
`test_backtest_equals_the_live_pipeline_over_its_period` shows the live run equals it)."""

from __future__ import annotations

import dataclasses
import random
import threading
import time

import psycopg
import pytest
from pipeline import Pipeline
from test_backtest import PARTITIONS, make_setup, sim_by_partition
from test_worker import produce

from sinks.tables import TABLE_OF_EVENT, TABLES
from ticktape import kafka_clients, registry
from ticktape.core import backtest as bt
from ticktape.core.features import FEATURE_NAMES, Bars, build_dataset
from ticktape.core.ml import Model, TrainParams, train
from ticktape.core.simbars import simulated_bars
from ticktape.serde import Serde

serde = Serde()
SYMS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]
T0 = 1_704_205_800_000_000  # 2024-01-02T14:30:00Z
SECONDS, RATE, PACE = 120, 60.0, 2.0  # event time, ticks/s over all symbols, × real time
KILLS = 12
ENV = {
    "STRATEGY_INTERVAL": "1s",
    "EXEC_MARKET_DATA": "bars",
    "STRATEGY_ENTER_P": "0.52",
    "STRATEGY_EXIT_P": "0.51",
    "STRATEGY_MIN_HOLD_BARS": "1",
    "BAR_GRACE_MS": "500",
    # a restart takes seconds: at 2x pace no symbol may count as idle meanwhile
    "RISK_IDLE_MS": "30000",
    "PROCESSOR_BATCH_SIZE": "200",
    "SINK_BATCH_SIZE": "500",
}


@pytest.fixture(scope="module")
def model_1s():
    short = [f for f in FEATURE_NAMES if f not in ("sma_200_rel", "sma_50_rel")]
    hist = simulated_bars(SYMS, seed=5, start_us=T0 - 7200 * 10**6, minutes=60, tick_rate=20.0, interval="1s")
    return train(build_dataset(Bars.from_events(hist), "1s", 5), short, 0.2, TrainParams(rounds=15), "direction")


def table_rows(url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        return {
            t.name: sorted(conn.execute(f"SELECT {', '.join(t.columns)} FROM {t.name}").fetchall(), key=repr)
            for t in TABLES.values()
        }


def expected_rows(ticks: dict, events: bt.Events) -> dict[str, list[tuple]]:
    out = {t.name: [] for t in TABLES.values()}
    out["ticks"] = [TABLES["tick"].row(t) for p in sorted(ticks) for t in ticks[p]]
    for event_type, table in TABLE_OF_EVENT.items():
        if event_type != "tick":
            out[table] = [TABLES[event_type].row(e) for e in events[event_type]]
    return {k: sorted(v, key=repr) for k, v in out.items()}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_twelve_kills_of_worker_and_sink_leave_every_table_exact(
    seed, services, fresh_db, model_1s, tmp_path, monkeypatch
):
    from pipeline import module_settings
    from sinks import schema

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    s = dataclasses.replace(module_settings(services, tmp_path, fresh_db), symbols=",".join(SYMS))
    kafka_clients.ensure_topics(s)
    schema.migrate(s)
    registry.register(s, model_1s)
    registry.activate(s, model_1s.metadata["version"])
    setup = dataclasses.replace(
        make_setup(),
        intervals=("1s", "1m"),
        universe=tuple(SYMS),
        market_data="bars",
        strategy=dataclasses.replace(make_setup().strategy, interval="1s"),
        idle_us=int(ENV["RISK_IDLE_MS"]) * 1000,
    )
    by_p = sim_by_partition(SECONDS / 60, rate=RATE, partitions=PARTITIONS, symbols=SYMS, seed=seed)
    end = max(t["ts"] for v in by_p.values() for t in v)
    ticks = {p: list(by_p.get(p, [])) for p in range(PARTITIONS)}
    flush = bt.flush_ticks(end, setup, PARTITIONS)
    for f in flush:
        ticks[f["seq"]].append(f)
    want = expected_rows(ticks, bt.run(ticks, setup, Model.load(model_1s.artifact, model_1s.metadata)))
    assert len(want["orders"]) >= 5 and len(want["fills"]) >= 5 and want["equity"]

    stream = sorted((t for p in sorted(by_p) for t in by_p[p]), key=lambda t: t["ts"])
    pipe = Pipeline(s, ["worker", "sink-postgres"], tmp_path, symbols=",".join(SYMS), env=ENV)
    rng = random.Random(seed)
    fed = threading.Event()

    def feed():  # the ticks at PACE × their event time, then the flush ticks
        t0 = time.monotonic()
        i = 0
        while i < len(stream):
            due = (stream[i]["ts"] - T0) / 1e6 / PACE
            j = i
            while j < len(stream) and (stream[j]["ts"] - T0) / 1e6 / PACE <= due + 0.25:
                j += 1
            time.sleep(max(0.0, t0 + due - time.monotonic()))
            produce(s, [(t["symbol"].encode(), serde.encode("tick", t), None) for t in stream[i:j]])
            i = j
        produce(s, [(f["symbol"].encode(), serde.encode("tick", f), f["seq"]) for f in flush])
        fed.set()

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        feeder.start()
        for k in range(KILLS):
            time.sleep(rng.uniform(2.0, 6.0))
            pipe.kill_and_restart("worker" if k % 2 == 0 else "sink-postgres")
        feeder.join(300)
        assert fed.is_set()
        counts = {t: len(v) for t, v in want.items()}
        deadline = time.monotonic() + 300
        while True:
            got = table_rows(s.database_url)
            if {t: len(v) for t, v in got.items()} == counts or time.monotonic() > deadline:
                break
            assert all(p.poll() is None for p in pipe.procs.values()), "a process exited (see the logs)"
            time.sleep(2)
    finally:
        pipe.stop()
    for table in want:
        assert got[table] == want[table], (table, len(got[table]), len(want[table]))

"""`ticktape status`: the health score rule on exact samples, and live figures plus a
local Prometheus scraping the processes of a running (partial) main job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from pipeline import Pipeline, module_settings, new_database
from test_prometheus import _rules

from ticktape.commands.status import (
    RUN_FILE,
    TARGETS_FILE,
    StageStatus,
    broker_lags,
    collect,
    consumed,
    overall_score,
    processes_of,
    stage_rows,
    stage_score,
    write_run_files,
)
from ticktape.config import REPO_ROOT
from ticktape.stack import LocalStack, free_port


def _samples(**series):
    """{'name': [(labels, value)]} from keyword args name=[(labels, value), ...]."""
    return {name: list(values) for name, values in series.items()}


def test_stage_score_rule():
    ok = StageStatus("bars", "worker:1", True, in_per_s=10.0, out_per_s=5.0, lag=10, freshness_s=1.0)
    assert stage_score(ok) == 100
    assert stage_score(StageStatus("bars", "worker:1", False)) == 0
    assert stage_score(StageStatus("bars", "w", True, in_per_s=0.0, out_per_s=0.0)) == 60
    assert stage_score(StageStatus("bars", "w", True, out_per_s=1.0, lag=1_001)) == 80
    assert stage_score(StageStatus("bars", "w", True, out_per_s=1.0, lag=10_001)) == 60
    assert stage_score(StageStatus("bars", "w", True, out_per_s=1.0, freshness_s=5.5)) == 80
    assert stage_score(StageStatus("bars", "w", True, out_per_s=1.0, freshness_s=31)) == 60
    assert stage_score(StageStatus("bars", "w", True, out_per_s=1.0, errors=1)) == 70
    worst = StageStatus("bars", "w", True, lag=10_001, freshness_s=31, errors=2)
    assert stage_score(worst) == 0  # 100 - 40 - 40 - 40 - 30, floored


def test_overall_score_is_mean_averaged_with_minimum():
    rows = [
        StageStatus("a", "p", True, score=100),
        StageStatus("b", "p", True, score=100),
        StageStatus("c", "p", True, score=100),
        StageStatus("d", "p", False, score=0),
    ]
    assert overall_score(rows) == 38  # round((75 + 0) / 2)
    assert overall_score(rows[:3]) == 100
    assert overall_score([StageStatus("d", "p", False)]) == 0
    assert overall_score([]) == 0


def test_stage_rows_from_two_samples():
    before = {
        "worker": _samples(
            ticktape_events_in_total=[({"stage": "bars", "topic": "md.ticks"}, 1000.0)],
            ticktape_events_out_total=[({"stage": "bars", "topic": "md.bars.1s"}, 100.0)],
            ticktape_event_latency_seconds_count=[({"stage": "bars"}, 100.0)],
            ticktape_event_latency_seconds_sum=[({"stage": "bars"}, 50.0)],
            ticktape_dlq_messages_total=[({"stage": "bars", "topic": "dlq.bars"}, 0.0)],
        ),
        "sink-postgres": _samples(
            ticktape_events_in_total=[({"stage": "sink-postgres", "topic": "md.ticks"}, 500.0)],
            ticktape_sink_errors_total=[({"sink": "postgres"}, 3.0)],
        ),
    }
    after = {
        "worker": _samples(
            ticktape_events_in_total=[({"stage": "bars", "topic": "md.ticks"}, 3000.0)],
            ticktape_events_out_total=[
                ({"stage": "bars", "topic": "md.bars.1s"}, 140.0),
                ({"stage": "bars", "topic": "md.bars.1m"}, 2.0),
            ],
            ticktape_event_latency_seconds_count=[({"stage": "bars"}, 140.0)],
            ticktape_event_latency_seconds_sum=[({"stage": "bars"}, 70.0)],
            ticktape_dlq_messages_total=[({"stage": "bars", "topic": "dlq.bars"}, 1.0)],
        ),
        "sink-postgres": _samples(
            ticktape_events_in_total=[({"stage": "sink-postgres", "topic": "md.ticks"}, 1500.0)],
            ticktape_sink_errors_total=[({"sink": "postgres"}, 3.0)],
            ticktape_consumer_lag=[
                ({"group": "ticktape.sink-postgres", "topic": "md.ticks", "partition": "0"}, 7.0),
                ({"group": "ticktape.sink-postgres", "topic": "md.ticks", "partition": "1"}, 5.0),
            ],
        ),
    }
    rows = stage_rows({"worker": 9102, "sink-postgres": 9103, "producer": 9101}, before, after, 2.0)
    assert rows == [
        StageStatus(
            "bars",
            "worker:9102",
            True,
            in_per_s=1000.0,
            out_per_s=21.0,
            lag=None,
            freshness_s=0.5,
            errors=1.0,
            score=70,
        ),
        StageStatus(
            "sink-postgres",
            "sink-postgres:9103",
            True,
            in_per_s=500.0,
            out_per_s=None,
            lag=12.0,
            freshness_s=None,
            errors=0.0,
            score=100,
        ),
        StageStatus("producer", "producer:9101", False),
    ]
    # the broker's lag wins over the gauges
    assert stage_rows({"sink-postgres": 1}, before, after, 2.0, {"sink-postgres": 42.0})[0].lag == 42.0


def test_run_file_or_default_roles(tmp_path):
    assert processes_of(tmp_path) == {
        "producer": (9101, None),
        "worker": (9102, None),
        "sink-postgres": (9103, None),
        "sink-redis": (9104, None),
    }
    (tmp_path / RUN_FILE).write_text('{"processes": [{"role": "worker", "port": 5555, "pid": 1}]}')
    assert processes_of(tmp_path) == {"worker": (5555, 1)}


def test_each_stage_reads_its_own_group_and_topics():
    worker = _samples(
        ticktape_events_in_total=[
            ({"stage": "bars", "topic": "md.ticks"}, 5.0),
            ({"stage": "execution", "topic": "md.bars.1s"}, 1.0),
            ({"stage": "execution", "topic": "trading.orders"}, 2.0),
        ]
    )
    assert consumed("bars", worker) == ("worker", {"md.ticks"})
    assert consumed("execution", worker) == ("worker", {"md.bars.1s", "trading.orders"})
    assert consumed("sink-postgres", {}) == ("sink-postgres", None)
    assert consumed("producer", worker) == (None, None)
    # without the broker, a stage sums only the gauges of its group and topics
    sink = _samples(
        ticktape_events_in_total=[({"stage": "sink-redis", "topic": "md.bars.1s"}, 9.0)],
        ticktape_consumer_lag=[
            ({"group": "ticktape.sink-redis", "topic": "md.bars.1s", "partition": "0"}, 4.0),
            ({"group": "ticktape.sink-postgres", "topic": "md.bars.1s", "partition": "0"}, 50.0),
        ],
    )
    rows = stage_rows(
        {"sink-redis": 1, "producer": 2},
        {},
        {
            "sink-redis": sink,
            "producer": _samples(ticktape_events_out_total=[({"stage": "producer", "topic": "md.ticks"}, 3.0)]),
        },
        1.0,
    )
    assert [(r.stage, r.lag) for r in rows] == [("sink-redis", 4.0), ("producer", None)]


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ticktape.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_bad_interval_and_bad_run_file_are_one_line_errors(tmp_path):
    env = os.environ | {"TICKTAPE_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    done = _cli("status", "--interval", "0", env=env)
    assert (done.returncode, done.stderr) == (
        2,
        "ticktape: error: --interval must be a positive number of seconds, not 0\n",
    )
    (tmp_path / RUN_FILE).write_text("{not json")
    done = _cli("status", env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not a run file" in done.stderr


@pytest.fixture(scope="module")
def running(services, tmp_path_factory):
    """The producer and the PostgreSQL sink running, recorded in the home's run files."""
    with new_database(services["DATABASE_URL"]) as url:
        home = tmp_path_factory.mktemp("status")
        s = module_settings(services, home, url)
        pipe = Pipeline(s, ["producer", "sink-postgres"], home)
        try:
            pipe.wait("sink-postgres", "ticktape_sink_rows_total", 100, table="ticks")
            yield s, pipe
        finally:
            pipe.stop()


def test_status_json_shows_live_figures(running):
    s, pipe = running
    env = os.environ | {
        "TICKTAPE_HOME": s.home,
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "TOPIC_PREFIX": s.topic_prefix,
        "PYTHONPATH": str(REPO_ROOT),
    }
    done = _cli("status", "--json", "--interval", "2", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["processes"] == [
        {"role": "producer", "port": pipe.ports["producer"], "pid": pipe.procs["producer"].pid, "up": True},
        {
            "role": "sink-postgres",
            "port": pipe.ports["sink-postgres"],
            "pid": pipe.procs["sink-postgres"].pid,
            "up": True,
        },
    ]
    producer, sink = report["stages"]
    assert producer["stage"] == "producer" and sink["stage"] == "sink-postgres"
    assert 150 < producer["out_per_s"] < 450  # the simulator runs at 300 ticks/s
    assert 100 < sink["in_per_s"] < 600
    assert sink["lag"] is not None and 0 <= sink["lag"] < 5000  # committed offsets, from the broker
    assert 0 <= sink["freshness_s"] < 5
    assert producer["errors"] == sink["errors"] == 0
    assert producer["score"] == 100
    assert report["health"] == overall_score([StageStatus(**st) for st in report["stages"]])
    text = _cli("status", "--interval", "1", env=env)
    assert text.returncode == 0 and text.stdout.startswith("ticktape status: health ")
    assert f"sink-postgres:{pipe.ports['sink-postgres']}" in text.stdout


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")
def test_local_prometheus_scrapes_the_running_processes(running):
    s, pipe = running
    written = json.loads((Path(s.home) / TARGETS_FILE).read_text())
    assert [g["labels"]["job"] for g in written] == list(pipe.procs)
    stack = LocalStack(s.home)
    url = stack.up(kafka=False, postgres=False, redis=False, prometheus=True)["PROMETHEUS_URL"]
    try:
        deadline = time.monotonic() + 60
        while True:
            doc = json.load(urllib.request.urlopen(f"{url}/api/v1/targets", timeout=5))
            targets = {t["labels"]["job"]: t for t in doc["data"]["activeTargets"]}
            if set(targets) == set(pipe.procs) and all(t["health"] == "up" for t in targets.values()):
                break
            assert time.monotonic() < deadline, f"targets not up: {targets}"
            time.sleep(1)
        assert {j: t["scrapeUrl"] for j, t in targets.items()} == {
            role: f"http://127.0.0.1:{port}/metrics" for role, port in pipe.ports.items()
        }
        q = urllib.parse.quote('sum by (job) (ticktape_events_out_total{stage="producer"})')
        while True:
            res = json.load(urllib.request.urlopen(f"{url}/api/v1/query?query={q}", timeout=5))["data"]["result"]
            if res and float(res[0]["value"][1]) > 0:
                break
            assert time.monotonic() < deadline, res
            time.sleep(1)
        assert res[0]["metric"] == {"job": "producer"}
        rules = json.load(urllib.request.urlopen(f"{url}/api/v1/rules", timeout=5))["data"]["groups"]
        assert len([r for g in rules for r in g["rules"]]) == len(_rules())  # alerts.yml loaded
    finally:
        stack.down()


def test_stage_lag_is_its_consumer_groups_lag_over_the_topics_it_reads(services, tmp_path):
    from confluent_kafka import TopicPartition

    from ticktape import kafka_clients

    with new_database(services["DATABASE_URL"]) as url:
        s = module_settings(services, tmp_path, url)
        kafka_clients.ensure_topics(s)
        producer = kafka_clients.producer(s)
        for topic, n in (("md.ticks", 10), ("md.bars.1s", 4), ("trading.orders", 6)):
            for _ in range(n):
                producer.produce(s.topic(topic), key=b"AAPL", value=b"x", partition=0)
                producer.flush(30)  # a record batch each: the local broker gives a batch one offset
        commits = {
            "worker": [("md.ticks", 3), ("md.bars.1s", 1), ("trading.orders", 6)],
            "sink-postgres": [("md.ticks", 8), ("md.bars.1s", 4)],
        }
        for group, offsets in commits.items():
            c = kafka_clients.consumer(s, s.group(group))
            c.commit(offsets=[TopicPartition(s.topic(t), 0, o) for t, o in offsets], asynchronous=False)
            c.close()
        lags = broker_lags(
            s,
            {
                "bars": ("worker", {"md.ticks"}),
                "indicators": ("worker", {"md.bars.1s"}),
                "execution": ("worker", {"md.bars.1s", "trading.orders"}),
                "sink-postgres": ("sink-postgres", None),
                "producer": (None, None),
            },
        )
        assert lags == {"bars": 7.0, "indicators": 3.0, "execution": 3.0, "sink-postgres": 2.0}


def test_two_stacks_side_by_side_each_read_their_own_processes(running, services, tmp_path):
    from ticktape.commands.run import Child, Summary

    s_a, pipe_a = running
    with new_database(services["DATABASE_URL"]) as url:
        s_b = module_settings(services, tmp_path, url)
        pipe_b = Pipeline(s_b, ["producer"], tmp_path)
        try:
            pipe_b.wait("producer", "ticktape_events_out_total", 10, stage="producer")
            for s, pipe in ((s_a, pipe_a), (s_b, pipe_b)):
                report = collect(s, 0.5, with_broker=False)
                producer = report["processes"][0]
                assert producer == {
                    "role": "producer",
                    "port": pipe.ports["producer"],
                    "pid": pipe.procs["producer"].pid,
                    "up": True,
                }
            # B's run file names A's port (as when B's producer could not bind it): not read as B's
            write_run_files(s_b.home, [("producer", pipe_a.ports["producer"], pipe_b.procs["producer"].pid)])
            report = collect(s_b, 0.5, with_broker=False)
            assert report["processes"] == [
                {
                    "role": "producer",
                    "port": pipe_a.ports["producer"],
                    "pid": pipe_b.procs["producer"].pid,
                    "up": False,
                    "note": f"port {pipe_a.ports['producer']} held by pid {pipe_a.procs['producer'].pid} "
                    f"of TICKTAPE_HOME {Path(s_a.home).resolve()}",
                }
            ]
            assert report["health"] == 0
            # the live line of `ticktape run` likewise
            child = Child("producer", [], proc=pipe_b.procs["producer"], port=pipe_a.ports["producer"])
            summary = Summary(
                [child, Child("worker", [], port=free_port()), Child("sink-postgres", [], port=free_port())], s_b.home
            )
            assert summary.figures()["ticks"] == 0
            assert summary.line(1.0).endswith(
                f"  [producer /metrics port {pipe_a.ports['producer']} held by pid {pipe_a.procs['producer'].pid} "
                f"of TICKTAPE_HOME {Path(s_a.home).resolve()}]"
            )
        finally:
            pipe_b.stop()


def test_each_process_serves_health_json_beside_metrics(running):
    s, pipe = running
    url = f"http://127.0.0.1:{pipe.ports['producer']}/health"
    first = json.load(urllib.request.urlopen(url, timeout=10))
    time.sleep(2.0)
    doc = json.load(urllib.request.urlopen(url, timeout=10))
    assert (first["role"], first["pid"], first["home"]) == (
        "producer",
        pipe.procs["producer"].pid,
        str(Path(s.home).resolve()),
    )
    assert doc["up"] is True and [st["stage"] for st in doc["stages"]] == ["producer"]
    assert 150 < doc["stages"][0]["out_per_s"] < 450  # the simulator runs at 300 ticks/s, since the last request
    assert doc["health"] == overall_score([StageStatus(**st) for st in doc["stages"]])
    # the same stage fields as `ticktape status --json`
    assert set(doc["stages"][0]) == set(StageStatus.__dataclass_fields__)
    sink = json.load(urllib.request.urlopen(f"http://127.0.0.1:{pipe.ports['sink-postgres']}/health", timeout=10))
    assert sink["role"] == "sink-postgres" and sink["stages"][0]["stage"] == "sink-postgres"
    assert (
        "ticktape_process_info"
        in urllib.request.urlopen(url.replace("/health", "/metrics"), timeout=10).read().decode()
    )


def test_the_live_line_says_while_the_worker_restores_its_state(tmp_path):
    from ticktape.commands.run import Child, Summary

    summary = Summary(
        [Child(role, [], port=free_port()) for role in ("producer", "worker", "sink-postgres")], str(tmp_path)
    )  # nothing listens: the last samples stand
    summary.last["worker"] = {"ticktape_recovery_remaining": [({}, 1234.0)]}
    assert summary.line(3.0).endswith("  [worker restoring its state: 1,234 changelog records to go]")
    summary.last["worker"] = {"ticktape_recovery_remaining": [({}, 0.0)]}
    assert "restoring" not in summary.line(4.0)

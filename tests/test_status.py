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
    RUN_FILE, TARGETS_FILE, StageStatus, overall_score, processes_of, stage_rows, stage_score)
from ticktape.config import REPO_ROOT
from ticktape.stack import LocalStack


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
    rows = [StageStatus("a", "p", True, score=100), StageStatus("b", "p", True, score=100),
            StageStatus("c", "p", True, score=100), StageStatus("d", "p", False, score=0)]
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
            ticktape_dlq_messages_total=[({"stage": "bars", "topic": "dlq.bars"}, 0.0)]),
        "sink-postgres": _samples(
            ticktape_events_in_total=[({"stage": "sink-postgres", "topic": "md.ticks"}, 500.0)],
            ticktape_sink_errors_total=[({"sink": "postgres"}, 3.0)]),
    }
    after = {
        "worker": _samples(
            ticktape_events_in_total=[({"stage": "bars", "topic": "md.ticks"}, 3000.0)],
            ticktape_events_out_total=[({"stage": "bars", "topic": "md.bars.1s"}, 140.0),
                                       ({"stage": "bars", "topic": "md.bars.1m"}, 2.0)],
            ticktape_event_latency_seconds_count=[({"stage": "bars"}, 140.0)],
            ticktape_event_latency_seconds_sum=[({"stage": "bars"}, 70.0)],
            ticktape_dlq_messages_total=[({"stage": "bars", "topic": "dlq.bars"}, 1.0)]),
        "sink-postgres": _samples(
            ticktape_events_in_total=[({"stage": "sink-postgres", "topic": "md.ticks"}, 1500.0)],
            ticktape_sink_errors_total=[({"sink": "postgres"}, 3.0)],
            ticktape_consumer_lag=[({"group": "ticktape.sink-postgres", "topic": "md.ticks", "partition": "0"}, 7.0),
                                   ({"group": "ticktape.sink-postgres", "topic": "md.ticks", "partition": "1"}, 5.0)]),
    }
    rows = stage_rows({"worker": 9102, "sink-postgres": 9103, "producer": 9101}, before, after, 2.0)
    assert rows == [
        StageStatus("bars", "worker:9102", True, in_per_s=1000.0, out_per_s=21.0, lag=None,
                    freshness_s=0.5, errors=1.0, score=70),
        StageStatus("sink-postgres", "sink-postgres:9103", True, in_per_s=500.0, out_per_s=None, lag=12.0,
                    freshness_s=None, errors=0.0, score=100),
        StageStatus("producer", "producer:9101", False),
    ]
    # the broker's lag wins over the gauges
    assert stage_rows({"sink-postgres": 1}, before, after, 2.0, {"sink-postgres": 42.0})[0].lag == 42.0


def test_run_file_or_default_roles(tmp_path):
    assert processes_of(tmp_path) == {"producer": 9101, "worker": 9102, "sink-postgres": 9103, "sink-redis": 9104}
    (tmp_path / RUN_FILE).write_text('{"processes": [{"role": "worker", "port": 5555, "pid": 1}]}')
    assert processes_of(tmp_path) == {"worker": 5555}


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ticktape.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


def test_bad_interval_and_bad_run_file_are_one_line_errors(tmp_path):
    env = os.environ | {"TICKTAPE_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    done = _cli("status", "--interval", "0", env=env)
    assert (done.returncode, done.stderr) == (
        2, "ticktape: error: --interval must be a positive number of seconds, not 0\n")
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
    env = os.environ | {"TICKTAPE_HOME": s.home, "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
                        "TOPIC_PREFIX": s.topic_prefix, "PYTHONPATH": str(REPO_ROOT)}
    done = _cli("status", "--json", "--interval", "2", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["processes"] == [{"role": "producer", "port": pipe.ports["producer"], "up": True},
                                   {"role": "sink-postgres", "port": pipe.ports["sink-postgres"], "up": True}]
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
            role: f"http://127.0.0.1:{port}/metrics" for role, port in pipe.ports.items()}
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

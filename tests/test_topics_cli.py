"""`ticktape topics list|describe|tail` on the real broker: offsets and changelog topics,
every config without librdkafka's log lines, ISO-8601 times, ml.models decoded, and a tail
that starts at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from sink_events import event

from ticktape import kafka_clients, registry
from ticktape.config import REPO_ROOT
from ticktape.core.trading import iso
from ticktape.serde import Serde


def _env(s) -> dict:
    return os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "TOPIC_PREFIX": s.topic_prefix,
        "TICKTAPE_HOME": s.home,
        "PYTHONPATH": str(REPO_ROOT),
    }


def _cli(s, *argv):
    return subprocess.run(
        [sys.executable, "-m", "ticktape.cli", "topics", *argv],
        env=_env(s),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _publish(s, topic: str, values: list[bytes]) -> None:
    producer = kafka_clients.producer(s)
    for value in values:
        producer.produce(s.topic(topic), key=b"AAPL", value=value, partition=0)
        producer.flush(30)  # a record batch each: one offset each on the local broker


def test_list_and_describe_show_offsets_changelogs_and_every_config(settings):
    s = settings
    kafka_clients.ensure_topics(s, ["md.ticks"])
    serde = Serde()
    _publish(s, "md.ticks", [serde.encode("tick", event("tick", i, symbol="AAPL")) for i in range(3)])
    changelog = f"{s.group('worker')}-bars-changelog"
    adm = kafka_clients.admin(s)
    adm.create_topics([kafka_clients.NewTopic(changelog, 2, 1)])[changelog].result(30)
    listed = _cli(s, "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows[s.topic("md.ticks")][-2:] == ["3", "yes"]
    assert rows[s.topic("md.bars.1m")][-2:] == ["-", "no"]
    assert rows[changelog] == [changelog, "changelog", "2", "-", "compact", "0", "yes"]
    described = _cli(s, "describe", "md.ticks")
    assert described.returncode == 0 and described.stderr == "", described.stderr
    doc = json.loads(described.stdout)
    assert doc["span"] == 3 and {"partition": 0, "low": 0, "high": 3} in doc["offsets"]
    assert len(doc["offsets"]) == doc["partitions"]
    # every config the broker reports, not a chosen few
    res = adm.describe_configs(
        [kafka_clients.ConfigResource(kafka_clients.ConfigResource.Type.TOPIC, s.topic("md.ticks"))]
    )
    reported = {k: v.value for fut in res.values() for k, v in fut.result().items()}
    assert doc["configs"] == reported and doc["configs"]["cleanup.policy"] == "delete"


def test_tail_starts_at_the_end_prints_iso_times_and_decodes_models(settings):
    s = settings
    kafka_clients.ensure_topics(s, ["md.ticks", "ml.models"])
    serde = Serde()
    _publish(s, "md.ticks", [serde.encode("tick", event("tick", i, symbol="AAPL")) for i in range(3)])  # old
    tail = subprocess.Popen(
        [sys.executable, "-m", "ticktape.cli", "topics", "tail", "md.ticks", "--count", "1"],
        env=_env(s),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, i = time.monotonic() + 120, 100
        while tail.poll() is None:  # new ticks until the tail has started and printed one
            assert time.monotonic() < deadline, "the tail printed nothing"
            _publish(s, "md.ticks", [serde.encode("tick", event("tick", i, symbol="AAPL"))])
            i += 1
            time.sleep(0.5)
        out, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    [line] = out.splitlines()
    tick = json.loads(line)
    assert tick["seq"] >= 100  # a new one, not one of the three before the tail
    assert tick["ts_iso"] == iso(tick["ts"]) and tick["ts_iso"].endswith("Z")
    meta = {"name": "direction", "version": "abc123", "features": ["ret_1"]}
    _publish(s, "ml.models", [registry.announcement(meta, b"\x00\x01\x02")])
    models = _cli(s, "tail", "ml.models", "--from-beginning", "--idle-timeout", "2")
    assert models.returncode == 0, models.stderr
    assert [json.loads(x) for x in models.stdout.splitlines()] == [{"announced": meta, "artifact_bytes": 3}]

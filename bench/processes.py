"""What the benchmarks on the real broker share: a namespace of topics (TOPIC_PREFIX)
preloaded with simulated ticks (or other events), worker subprocesses configured by env
vars and read through their own /metrics, and the namespace's removal afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from ticktape import kafka_clients
from ticktape.config import REPO_ROOT, Settings
from ticktape.core.bars import BarAggregator
from ticktape.core.sim import MarketSimulator
from ticktape.core.tickbatch import TickBatcher, events_of, make_batch
from ticktape.serde import Serde

T0 = 1_767_225_600_000_000  # 2026-01-01: event time of the preloaded ticks


POLL_S = 0.5  # between scrapes of a timed process: a scrape costs a worker 4-7 ms of CPU (measured), 1 % at this pace


def namespace(s: Settings, bench: str, **overrides) -> Settings:
    """Settings of a fresh namespace ``bench.<bench>.<random>.``."""
    from dataclasses import replace

    return replace(s, topic_prefix=f"bench.{bench}.{uuid.uuid4().hex[:8]}.", **overrides)


def symbols(n: int) -> list[str]:
    return [f"S{i:05d}" for i in range(n)]


def tick_messages(
    n_ticks: int, n_symbols: int, tick_rate: float, batch_max: int, batch_ms: int, serde: Serde
) -> list[tuple[bytes, bytes]]:
    """(key, value) of ``n_ticks`` simulated ticks as the producers send them — TickBatch
    messages when ``batch_max`` > 1, cut by size and event time only, so the same
    arguments give the same messages — then one quote-only tick an hour later per symbol,
    so that every window closes."""
    ticks = bench_ticks(n_ticks, n_symbols, tick_rate)
    last = ticks[-1]
    # the flush ticks go after every batch: batched with the rest, they would overtake the
    # batches still open and make those ticks late
    flush = [
        {
            **last,
            "symbol": sym,
            "ts": last["ts"] + 3600 * 10**6,
            "seq": 0,
            "event_id": f"flush-{i}",
            "price": None,
            "size": None,
        }
        for i, sym in enumerate(symbols(n_symbols))
    ]
    if batch_max <= 1:
        return [(t["symbol"].encode(), serde.encode("tick", t)) for t in ticks + flush]
    batcher = TickBatcher(batch_max, batch_ms)
    groups = [g for t in ticks for _, g in batcher.add("md.ticks", t, 0.0)] + [g for _, g in batcher.drain()]
    return [
        (
            g[0]["symbol"].encode(),
            serde.encode("tick_batch", make_batch(g)) if len(g) > 1 else serde.encode("tick", g[0]),
        )
        for g in groups
    ] + [(t["symbol"].encode(), serde.encode("tick", t)) for t in flush]


def bench_ticks(n_ticks: int, n_symbols: int, tick_rate: float) -> list[dict]:
    """The simulated ticks ``tick_messages`` sends (without its flush ticks)."""
    stream = MarketSimulator(symbols(n_symbols), seed=7, tick_rate=tick_rate, start_us=T0).ticks()
    return [next(stream) for _ in range(n_ticks)]


def preload(s: Settings, messages: list[tuple[bytes, bytes]], topic: str = "md.ticks") -> None:
    """Create the namespace's topics and send the messages to its ``topic`` (keyed)."""
    kafka_clients.ensure_topics(s)
    producer = kafka_clients.producer(s)
    topic = s.topic(topic)
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise RuntimeError(f"preloading {topic}: not every message was delivered")


def core_bars(s: Settings, intervals: list[str]) -> list[dict]:
    """The bars the pure core makes of the namespace's md.ticks, partition by partition in
    offset order, as the bars stage reads them."""
    serde = Serde()
    ticks: dict[int, list[dict]] = {}
    for m in kafka_clients.read_to_end(s, s.topic("md.ticks"), f"{s.topic_prefix}check"):
        kind, record = serde.decode(m.value())
        ticks.setdefault(m.partition(), []).extend(events_of(kind, record))
    return [
        bar for part in ticks.values() for bar in BarAggregator(intervals, s.bar_grace_ms * 1000).process(part).bars
    ]


def count_ticks(messages, serde: Serde) -> int:
    return sum(len(serde.decode_trades(v)[2]) for _, v in messages)


def drop(s: Settings) -> None:
    """Delete every topic of ``s``'s namespace (including Faust's changelogs)."""
    topics = [t for t in kafka_clients.admin(s).list_topics(timeout=10).topics if t.startswith(s.topic_prefix)]
    if topics:
        kafka_clients.delete_topics(s, topics)


class Process:
    """A subprocess (``python -m <module> …``) of the namespace, with its /metrics."""

    def __init__(self, s: Settings, module_args: list[str], log_path: Path, metrics_port: int, **env):
        self.metrics_port = metrics_port
        self.log_path = log_path
        environ = (
            os.environ
            | {
                "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
                "DATABASE_URL": s.database_url,
                "REDIS_URL": s.redis_url,
                "TOPIC_PREFIX": s.topic_prefix,
                "TICKTAPE_HOME": s.home,
                "METRICS_PORT": str(metrics_port),
                "TOPIC_PARTITIONS": str(s.topic_partitions),
                "PYTHONPATH": str(REPO_ROOT),
                "LOG_LEVEL": "WARNING",
            }
            | env
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *module_args], env=environ, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT
            )

    def scrape(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()

    def metric(self, name: str, **labels) -> float:
        """A sample's value; 0 when the process is not serving it yet."""
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        try:
            text = self.scrape()
        except OSError:
            return 0.0
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}} "):
                return float(line.split()[-1])
        return 0.0

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.proc.args} exited with {self.proc.returncode}: "
                f"{self.log_path.read_text(errors='replace')[-2000:]}"
            )

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def time_count(procs: list[Process], total: float, name: str, timeout: float, **labels) -> dict:
    """Poll a counter summed over ``procs`` until it reaches ``total``: the rate from the
    first poll that saw any count to the one that saw all (start-up and group join
    excluded), with the count already done at the first poll subtracted.  When one poll
    already saw it all (a fast run between two polls), the time runs from the last poll
    that saw none: a lower bound of the rate, never an undefined one."""
    deadline = time.monotonic() + timeout
    first = None
    last_zero = time.monotonic()
    while True:
        now = time.monotonic()
        count = sum(p.metric(name, **labels) for p in procs)
        if first is None and count > 0:
            first = (now, count) if count < total else (last_zero, 0)
        if first is None:
            last_zero = now
        if count >= total:
            break
        if now > deadline:
            raise TimeoutError(f"{name} reached {count:,.0f} of {total:,.0f} in {timeout:.0f} s")
        for p in procs:
            p.check()
        time.sleep(POLL_S)
    seconds = now - first[0]
    return {"rate": (count - first[1]) / seconds, "seconds": seconds, "counted": count - first[1]}


@contextlib.contextmanager
def scratch_database(admin_url: str, bench: str):
    """URL of a new, migrated database of its own (dropped afterwards): a benchmark's
    models table or sink tables never touch the stack's."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from sinks import schema

    name = f"bench_{bench}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(**(conninfo_to_dict(admin_url) | {"dbname": name}))
    try:
        from ticktape.config import settings

        schema.migrate(settings(database_url=url))
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""What the benchmarks on the real broker share: a namespace of topics (TOPIC_PREFIX)
preloaded with simulated ticks, worker subprocesses configured by env vars and read
through their own /metrics, and the namespace's removal afterwards."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from producers.base import EventPublisher
from ticktape import kafka_clients
from ticktape.config import REPO_ROOT, Settings
from ticktape.core.sim import MarketSimulator

T0 = 1_767_225_600_000_000  # 2026-01-01: event time of the preloaded ticks


def namespace(s: Settings, bench: str, **overrides) -> Settings:
    """Settings of a fresh namespace ``bench.<bench>.<random>.``."""
    from dataclasses import replace

    return replace(s, topic_prefix=f"bench.{bench}.{uuid.uuid4().hex[:8]}.", **overrides)


def symbols(n: int) -> list[str]:
    return [f"S{i:05d}" for i in range(n)]


def preload(s: Settings, n_ticks: int, n_symbols: int, tick_rate: float) -> int:
    """Publish ``n_ticks`` simulated ticks to md.ticks of ``s``'s namespace (TickBatch
    messages when ``s.tick_batch_max`` > 1), then one quote-only tick an hour later per
    symbol so every window closes; returns how many ticks were published."""
    kafka_clients.ensure_topics(s)
    sim = MarketSimulator(symbols(n_symbols), seed=7, tick_rate=tick_rate, start_us=T0)
    pub = EventPublisher(s, stage="bench")
    ticks = sim.ticks()
    last = None
    for _ in range(n_ticks):
        last = next(ticks)
        pub.publish("md.ticks", "tick", last)
    for i, sym in enumerate(sim.symbols):
        pub.publish("md.ticks", "tick", {**last, "symbol": sym, "ts": last["ts"] + 3600 * 10**6, "seq": 0,
                                          "event_id": f"flush-{i}", "price": None, "size": None})
    pub.close()
    return n_ticks + n_symbols


def drop(s: Settings) -> None:
    """Delete every topic of ``s``'s namespace (including Faust's changelogs)."""
    topics = [t for t in kafka_clients.admin(s).list_topics(timeout=10).topics
              if t.startswith(s.topic_prefix)]
    if topics:
        kafka_clients.delete_topics(s, topics)


class Process:
    """A subprocess (``python -m <module> …``) of the namespace, with its /metrics."""

    def __init__(self, s: Settings, module_args: list[str], log_path: Path, metrics_port: int, **env):
        self.metrics_port = metrics_port
        self.log_path = log_path
        environ = os.environ | {
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers, "DATABASE_URL": s.database_url,
            "REDIS_URL": s.redis_url, "TOPIC_PREFIX": s.topic_prefix, "TICKTAPE_HOME": s.home,
            "METRICS_PORT": str(metrics_port), "TOPIC_PARTITIONS": str(s.topic_partitions),
            "PYTHONPATH": str(REPO_ROOT), "LOG_LEVEL": "WARNING"} | env
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", *module_args], env=environ, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=REPO_ROOT)

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
            raise RuntimeError(f"{self.proc.args} exited with {self.proc.returncode}: "
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")

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
    excluded), with the count already done at the first poll subtracted."""
    deadline = time.monotonic() + timeout
    first = None
    while True:
        now = time.monotonic()
        count = sum(p.metric(name, **labels) for p in procs)
        if first is None and count > 0:
            first = (now, count)
        if count >= total:
            break
        if now > deadline:
            raise TimeoutError(f"{name} reached {count:,.0f} of {total:,.0f} in {timeout:.0f} s")
        for p in procs:
            p.check()
        time.sleep(0.02)
    seconds = now - first[0]
    return {"rate": (count - first[1]) / seconds if seconds > 0 else float("nan"), "seconds": seconds,
            "counted": count - first[1]}

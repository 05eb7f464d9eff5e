"""Ticks → 1 s and 1 min bars on one-tick messages: ticktape's bars worker beside Quix
Streams and Bytewax, same broker, same preloaded topic, interleaved rounds.

Per round and system, a fresh namespace (TOPIC_PREFIX) is preloaded with the same
single-Tick Avro messages (simulated, 50 symbols at 2,000 ticks/s of event time, then a
quote-only tick an hour later per symbol so that every window closes).  Each system
makes its bars in a process of its own; its figure is ticks per CPU-second of that
process, from its first tick to its last (start-up and group join excluded: CPU time
is steadier than wall time on a loaded machine).  The broker's CPU over the same span,
per tick, is the second figure.  Every system's bars are checked against the pure
core's over the same partitions before its figures count.

The peers run in a venv of their own (.venv-peers, made here from
bench/peers/requirements.txt): Quix Streams pins an older confluent-kafka than ticktape.

    python -m bench.bench_peers            # 300,000 ticks, 3 rounds
    python -m bench.bench_peers --quick    # 20,000 ticks: a smoke run
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import ROOT, Figure, bench_main, repeat, services
from bench.processes import POLL_S, Process, core_bars, drop, namespace, preload, tick_messages
from ticktape import kafka_clients
from ticktape.serde import Serde
from ticktape.stack import LocalStack, free_port

INTERVALS = ["1s", "1m"]
TICK_RATE = 2_000.0  # event-time ticks/s: a live feed's pace, so that bars are many
PEERS = ROOT / "bench" / "peers"
PEERS_VENV = ROOT / ".venv-peers"
BAR_FIELDS = ("open", "high", "low", "close", "volume", "trade_count")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peer_python() -> str:
    """The peers' interpreter: .venv-peers, (re)made when its requirements changed."""
    requirements = PEERS / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = PEERS_VENV / ".requirements.sha256"
    python = PEERS_VENV / "bin" / "python"
    if not python.exists() or not stamp.exists() or stamp.read_text() != digest:
        print(f"installing the peers into {PEERS_VENV} …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
        stamp.write_text(digest)
    return str(python)


@dataclass
class BrokerClock:
    """The broker's CPU time, sampled in the background (None: not a local process)."""

    pid: int | None
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.pid:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append((time.time(), cpu_seconds(self.pid)))

    def between(self, start: float, end: float) -> float | None:
        """CPU seconds the broker spent from wall time ``start`` to ``end``."""
        inside = [cpu for t, cpu in self.samples if start <= t <= end]
        return inside[-1] - inside[0] if len(inside) >= 2 else None

    def stop(self) -> None:
        self._stop.set()


@dataclass(frozen=True)
class Span:
    """A system's work on its input: wall-clock bounds, ticks taken and CPU seconds spent."""

    first_wall: float
    last_wall: float
    ticks: int
    cpu: float


def ticktape_run(ns, n_messages: int, logs: Path) -> Span:
    """The bars worker's span, from the first poll of its counter that sees ticks."""
    worker = Process(
        ns,
        ["ticktape.cli", "process", "worker"],
        logs / "ticktape.log",
        free_port(),
        WORKER_STAGES="bars",
        BAR_INTERVALS=",".join(INTERVALS),
    )
    try:
        deadline = time.monotonic() + 600
        first = None
        while True:
            count = worker.metric("ticktape_events_in_total", stage="bars", topic="md.ticks")
            now, cpu = time.time(), cpu_seconds(worker.proc.pid)
            if first is None and count > 0:
                first = (now, cpu, count)
            if count >= n_messages:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"ticktape: {count:,.0f} of {n_messages:,} ticks in 600 s")
            worker.check()
            time.sleep(POLL_S)
        check_bars(ns, "ticktape", lambda v: Serde().decode(v)[1])
        return Span(first[0], now, int(n_messages - first[2]), cpu - first[1])
    finally:
        worker.stop()


def peer_run(name: str, ns, n_messages: int, logs: Path) -> Span:
    """A peer job's span, from its first tick to its last (it writes them to PEER_STATS)."""
    stats = logs / f"{name}-{ns.topic_prefix}stats.json"
    env = os.environ | {
        "PEER_BROKER": ns.kafka_bootstrap_servers,
        "PEER_INPUT": ns.topic("md.ticks"),
        "PEER_OUTPUT_PREFIX": ns.topic_prefix,
        "PEER_GROUP": f"{ns.topic_prefix}{name}",
        "PEER_GRACE_MS": str(ns.bar_grace_ms),
        "PEER_EXPECT": str(n_messages),
        "PEER_STATS": str(stats),
        "PYTHONPATH": str(PEERS),
    }
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [peer_python(), str(PEERS / f"{name}_bars.py")], env=env, cwd=PEERS, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 600
        while not stats.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: see {logs / f'{name}.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: not every tick taken in 600 s")
            time.sleep(0.1)
        done = json.loads(stats.read_text())
        check_bars(ns, name, json.loads)
        return Span(done["first_wall"], done["last_wall"], n_messages - 1, done["last_cpu"] - done["first_cpu"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_bars(ns, system: str, decode) -> None:
    """The system's bars are the core's (open, high, low, close, volume, trade count of
    every symbol's windows), none missing or extra; waits for the last ones."""
    want = {
        (b["symbol"], b["interval"], b["window_start"]): tuple(b[f] for f in BAR_FIELDS)
        for b in core_bars(ns, INTERVALS)
    }
    deadline = time.monotonic() + 120
    while True:
        got = {}
        for iv in INTERVALS:
            for m in kafka_clients.read_to_end(ns, ns.topic(f"md.bars.{iv}"), f"{ns.topic_prefix}check"):
                b = decode(m.value())
                got[(b["symbol"], iv, b["window_start"])] = tuple(b[f] for f in BAR_FIELDS)
        if got == want:
            return
        if len(got) >= len(want) or time.monotonic() > deadline:
            wrong = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
            raise AssertionError(
                f"{system}: {len(wrong):,} of {len(want):,} bars differ from the core's, "
                f"e.g. {[(k, want.get(k), got.get(k)) for k in wrong[:3]]}"
            )
        time.sleep(1)


def run(quick: bool, runs: int) -> list[Figure]:
    n, n_symbols = (20_000, 20) if quick else (300_000, 50)
    s = services()
    messages = tick_messages(n, n_symbols, TICK_RATE, 0, 0, Serde())
    logs = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    broker = BrokerClock(
        LocalStack(s.home).state().get("kafka", {}).get("pid")
        if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        else None
    )
    systems = {
        "ticktape": lambda ns: ticktape_run(ns, len(messages), logs),
        "quix": lambda ns: peer_run("quix", ns, len(messages), logs),
        "bytewax": lambda ns: peer_run("bytewax", ns, len(messages), logs),
    }
    peer_python()  # installed before anything is timed

    def one() -> dict:
        out = {}
        for name, measure in systems.items():  # interleaved: each round runs every system
            ns = namespace(s, f"peers-{name}")
            try:
                preload(ns, messages)
                span = measure(ns)
                broker_cpu = broker.between(span.first_wall, span.last_wall)
                out[name] = {
                    "rate": span.ticks / span.cpu,
                    "broker_us": None if broker_cpu is None else broker_cpu / span.ticks * 1e6,
                }
            finally:
                drop(ns)
        return out

    try:
        results = repeat(one, runs)
    finally:
        broker.stop()
    detail = {
        "ticks": len(messages),
        "symbols": n_symbols,
        "event_rate": TICK_RATE,
        "intervals": ",".join(INTERVALS),
        "grace_ms": s.bar_grace_ms,
        "logs": str(logs),
    }
    figures = [
        Figure(
            "peers",
            f"{label}, one tick per message ({len(messages):,} ticks)",
            "ticks/CPU-s",
            [r[name]["rate"] for r in results],
            detail=detail,
        )
        for name, label in (
            ("ticktape", "ticktape bars worker"),
            ("quix", "Quix Streams 3.28"),
            ("bytewax", "Bytewax 0.21, one worker"),
        )
    ]
    figures += [
        Figure(
            "peers",
            "ticktape / Bytewax, same round",
            "x",
            [r["ticktape"]["rate"] / r["bytewax"]["rate"] for r in results],
            goal=">= 1x",
            target=1.0,
            detail=detail,
        ),
        Figure(
            "peers",
            "ticktape / Quix Streams, same round",
            "x",
            [r["ticktape"]["rate"] / r["quix"]["rate"] for r in results],
            goal=">= 2x",
            target=2.0,
            detail=detail,
        ),
    ]
    if all(r[name]["broker_us"] is not None for r in results for name in systems):
        figures += [
            Figure(
                "peers",
                f"broker CPU per tick serving {name}",
                "µs",
                [r[name]["broker_us"] for r in results],
                detail=detail,
                **({"goal": "<= 2", "target": 2.0, "higher_is_better": False} if name == "ticktape" else {}),
            )
            for name in systems
        ]
    return figures


def main(argv=None) -> int:
    return bench_main("peers", run, __doc__, argv, runs=3)


if __name__ == "__main__":
    sys.exit(main())

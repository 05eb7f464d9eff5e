"""Tick → bar throughput of the worker on the real broker (goal 1), against a naive Faust
agent in the same run.

Per run, in fresh namespaces (TOPIC_PREFIX): md.ticks is preloaded with simulated ticks
at 100,000 ticks/s of event time — TickBatch messages as the producers cut them at that
rate (1,024 ticks or 20 ms of event time) — and a bars-only worker (WORKER_STAGES=bars) decodes, aggregates, sends
the bars and writes its changelog; its rate is read from its own ticks-in counter, from
the first poll that sees ticks to the one that sees all (start-up excluded).  Then the
naive per-event windowed-table agent (bench/naive_bars.py) gets single-tick messages;
the ratio is of the two rates of the same run.  Every run's bars are checked against
the pure core's over the same partitions (a fast wrong worker would not count).

    python -m bench.bench_ticks            # 1,000,000 ticks (50 symbols), naive 20,000
    python -m bench.bench_ticks --quick    # smoke test
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Figure, bench_main, repeat, services
from bench.processes import Process, core_bars, count_ticks, drop, namespace, preload, tick_messages, time_count
from ticktape import kafka_clients
from ticktape.serde import Serde
from ticktape.stack import free_port

TICK_RATE = 100_000.0  # event-time ticks/s of the preloaded stream: what the producers batch
INTERVALS = ["1s", "1m"]


def worker_rate(s, messages, total: int, logs: Path) -> dict:
    ns = namespace(s, "ticks")
    try:
        preload(ns, messages)
        worker = Process(
            ns,
            ["ticktape.cli", "process", "worker"],
            logs / "worker.log",
            free_port(),
            WORKER_STAGES="bars",
            BAR_INTERVALS=",".join(INTERVALS),
        )
        try:
            rate = time_count([worker], total, "ticktape_events_in_total", 300, stage="bars", topic="md.ticks")
            check_bars(ns)
            return rate
        finally:
            worker.stop()
    finally:
        drop(ns)


def check_bars(s) -> None:
    """The worker's bars are the core's over each md.ticks partition, none missing or extra."""
    serde = Serde()
    want = sorted(serde.encode("bar", bar) for bar in core_bars(s, INTERVALS))
    deadline = time.monotonic() + 60
    while True:
        got = sorted(
            m.value()
            for iv in INTERVALS
            for m in kafka_clients.read_to_end(s, s.topic(f"md.bars.{iv}"), f"{s.topic_prefix}check")
        )
        if got == want:
            return
        if len(got) >= len(want) or time.monotonic() > deadline:
            raise AssertionError(f"the worker's bars differ from the core's: {len(got):,} bars, want {len(want):,}")
        time.sleep(1)  # the last bars are still on their way


def naive_rate(s, messages, logs: Path) -> dict:
    ns = namespace(s, "naive")
    try:
        preload(ns, messages)
        agent = Process(ns, ["bench.naive_bars"], logs / "naive.log", free_port())
        try:
            return time_count(
                [agent], len(messages), "ticktape_events_in_total", 600, stage="naive_bars", topic="md.ticks"
            )
        finally:
            agent.stop()
    finally:
        drop(ns)


def run(quick: bool, runs: int) -> list[Figure]:
    n, n_naive, n_symbols = (30_000, 2_000, 20) if quick else (1_000_000, 20_000, 50)
    batch_max, batch_ms = 1024, 20
    s = services()
    serde = Serde()
    batched = tick_messages(n, n_symbols, TICK_RATE, batch_max, batch_ms, serde)
    single = tick_messages(n_naive, n_symbols, TICK_RATE, 0, 0, serde)
    total = count_ticks(batched, serde)
    logs = Path(tempfile.mkdtemp(prefix="bench-ticks-"))

    def one() -> dict:
        return {"worker": worker_rate(s, batched, total, logs), "naive": naive_rate(s, single, logs)}

    results = repeat(one, runs)
    detail = {
        "ticks": n,
        "naive_ticks": n_naive,
        "symbols": n_symbols,
        "event_rate": TICK_RATE,
        "tick_batch_max": batch_max,
        "tick_batch_ms": batch_ms,
        "messages": len(batched),
        "ticks_per_message": round(total / len(batched), 1),
        "intervals": "1s,1m",
        "seconds": [r["worker"]["seconds"] for r in results],
    }
    return [
        Figure(
            "ticks",
            f"tick → bars → publish, worker on TickBatch messages ({n:,} ticks)",
            "ticks/s",
            [r["worker"]["rate"] for r in results],
            goal=">= 100,000",
            target=100_000.0,
            detail=detail,
        ),
        Figure(
            "ticks",
            f"naive Faust per-event windowed-table agent ({n_naive:,} single-tick messages)",
            "ticks/s",
            [r["naive"]["rate"] for r in results],
            detail=detail,
        ),
        Figure(
            "ticks",
            "worker / naive agent, same run",
            "x",
            [r["worker"]["rate"] / r["naive"]["rate"] for r in results],
            goal=">= 30x",
            target=30.0,
            detail=detail,
        ),
    ]


def main(argv=None) -> int:
    return bench_main("ticks", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())

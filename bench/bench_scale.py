"""Scale (goal 5): one bars worker vs two in one consumer group on 12-partition topics
(TOPIC_PARTITIONS=12), same input, identical output; and the state a symbol costs.

Per run, the same TickBatch messages go to two fresh namespaces; one worker processes
the first, two workers of one group the second.  Rates come from the workers' own ticks-in
counters (summed), from the first tick counted to the last; the bars of both (distinct
messages per topic and partition) must be identical, byte for byte.

State per symbol: the changelog values (JSON, as the tables store them) of the bars
state at 10,000 symbols after simulated ticks (1s and 1m windows open), and of one
symbol's indicator and feature states after 300 one-minute bars (their lookbacks full).

    python -m bench.bench_scale            # 400,000 ticks over 200 symbols
    python -m bench.bench_scale --quick    # smoke test
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from bench.harness import Figure, bench_main, repeat, services
from bench.processes import Process, T0, count_ticks, drop, namespace, preload, symbols, tick_messages, time_count
from ticktape import kafka_clients
from ticktape.core.bars import BarAggregator
from ticktape.core.features import FeatureState
from ticktape.core.indicators import IndicatorState, indicator_event
from ticktape.core.sim import MarketSimulator
from ticktape.core.simbars import simulated_bars
from ticktape.serde import Serde
from ticktape.stack import free_port

PARTITIONS = 12
INTERVALS = ("1s", "1m")


def bars_of(s, count: int, timeout: float = 120) -> dict:
    """Distinct bar messages per (topic, partition), in order, once ``count`` are read."""
    cons = kafka_clients.consumer(s, f"{s.topic_prefix}reader")
    cons.assign(
        [TopicPartition(s.topic(f"md.bars.{iv}"), p, OFFSET_BEGINNING) for iv in INTERVALS for p in range(PARTITIONS)]
    )
    out, seen = defaultdict(list), set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < count and time.monotonic() < deadline:
            msg = cons.poll(0.2)
            if msg is None or msg.error():
                continue
            if msg.value() not in seen:  # a bar re-sent after a rebalance has the same bytes
                seen.add(msg.value())
                out[(msg.topic()[len(s.topic_prefix) :], msg.partition())].append(msg.value())
    finally:
        cons.close()
    return dict(out)


def workers_rate(s, messages, total: int, n_workers: int, logs: Path) -> tuple[dict, dict]:
    ns = namespace(s, "scale", topic_partitions=PARTITIONS)
    try:
        preload(ns, messages)
        procs = [
            Process(
                ns,
                ["ticktape.cli", "process", "worker"],
                logs / f"worker{n_workers}-{i}.log",
                free_port(),
                WORKER_STAGES="bars",
                BAR_INTERVALS=",".join(INTERVALS),
            )
            for i in range(n_workers)
        ]
        try:
            rate = time_count(procs, total, "ticktape_events_in_total", 600, stage="bars", topic="md.ticks")
            closed = sum(p.metric("ticktape_bars_closed_total", interval=iv) for p in procs for iv in INTERVALS)
        finally:
            for p in procs:
                p.stop()
        return rate, bars_of(ns, int(closed))
    finally:
        drop(ns)


def state_bytes(n_symbols: int, n_ticks: int) -> dict:
    """Bytes per symbol of the tables' values (JSON): bars, indicators, features."""
    sim = MarketSimulator(symbols(n_symbols), seed=3, tick_rate=50_000.0, start_us=T0)
    agg = BarAggregator(list(INTERVALS), 500_000)
    stream = sim.ticks()
    agg.process([next(stream) for _ in range(n_ticks)])
    bars = sum(len(json.dumps({"p": 0, **agg.symbol_state(sym)})) for sym in agg.symbols) / len(agg.symbols)
    ind, feat = IndicatorState("1m"), FeatureState()
    for bar in simulated_bars(["AAPL"], seed=3, start_us=T0, minutes=300, interval="1m"):
        feat.update(indicator_event(bar, ind.update(bar)))
    return {
        "bars": bars,
        "bars_symbols": len(agg.symbols),
        "indicators": len(json.dumps({"p": 0, **ind.to_state()})),
        "features": len(json.dumps({"p": 0, **feat.to_state()})),
    }


def run(quick: bool, runs: int) -> list[Figure]:
    n, n_symbols, state_symbols = (30_000, 40, 500) if quick else (400_000, 200, 10_000)
    s = services()
    serde = Serde()
    messages = tick_messages(n, n_symbols, 100_000.0, 1024, 20, serde)
    total = count_ticks(messages, serde)
    logs = Path(tempfile.mkdtemp(prefix="bench-scale-"))

    def one() -> dict:
        one_rate, one_bars = workers_rate(s, messages, total, 1, logs)
        two_rate, two_bars = workers_rate(s, messages, total, 2, logs)
        if one_bars != two_bars:
            raise AssertionError("two workers emitted other bars than one")
        return {"one": one_rate["rate"], "two": two_rate["rate"], "bars": sum(map(len, one_bars.values()))}

    results = repeat(one, runs)
    state = state_bytes(state_symbols, 20 * state_symbols)  # deterministic: the same in every run
    detail = {
        "ticks": n,
        "symbols": n_symbols,
        "partitions": PARTITIONS,
        "messages": len(messages),
        "bars_identical": True,
        "bars": results[0]["bars"],
    }
    per_symbol = [state["bars"] + state["indicators"] * len(INTERVALS) + state["features"]] * runs
    return [
        Figure(
            "scale",
            f"1 bars worker, {PARTITIONS} partitions ({n:,} ticks)",
            "ticks/s",
            [r["one"] for r in results],
            detail=detail,
        ),
        Figure(
            "scale",
            "2 bars workers in one group (output identical to 1)",
            "ticks/s",
            [r["two"] for r in results],
            detail=detail,
        ),
        Figure(
            "scale",
            "2 workers / 1 worker, same run",
            "x",
            [r["two"] / r["one"] for r in results],
            goal="> 1x",
            target=1.0,
            detail=detail,
        ),
        Figure(
            "scale",
            f"state per symbol at {state_symbols:,} symbols (bars + indicators × "
            f"{len(INTERVALS)} intervals + features, JSON)",
            "bytes",
            per_symbol,
            detail=state,
        ),
    ]


def main(argv=None) -> int:
    return bench_main("scale", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())

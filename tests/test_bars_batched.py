"""The bars stage on TickBatch messages: a real worker given ticks in batches emits
exactly what a real worker given the same ticks one message each emits — the same bars
in the same order, the same late ticks and dead letters (as single Tick messages)."""

from __future__ import annotations

import dataclasses
import math

from test_bars import random_ticks
from test_worker import INTERVALS, PARTITIONS, Worker, expected_output, flush_items, produce, read

from ticktape import kafka_clients
from ticktape.core.tickbatch import TickBatcher, make_batch
from ticktape.serde import Serde

serde = Serde()


def test_batched_ticks_give_the_bars_of_the_same_ticks_one_by_one(settings, tmp_path):
    ticks = random_ticks(13, 3000)
    ticks[700]["price"] = math.nan  # invalid: its batch's other ticks still count
    batcher = TickBatcher(64, 5000)  # up to 5 s of event time per batch
    groups = [g for t in ticks for _, g in batcher.add("md.ticks", t, 0.0)] + [g for _, g in batcher.drain()]
    assert sum(map(len, groups)) == len(ticks) and max(map(len, groups)) > 10
    flush = flush_items(ticks[-1]["ts"] + 3600 * 10**6)
    batched = [
        (
            g[0]["symbol"].encode(),
            serde.encode("tick_batch", make_batch(g)) if len(g) > 1 else serde.encode("tick", g[0]),
            None,
        )
        for g in groups
    ] + flush
    single = [(t["symbol"].encode(), serde.encode("tick", t), None) for g in groups for t in g] + flush
    s_batched = settings
    s_single = dataclasses.replace(settings, topic_prefix=settings.topic_prefix + "single.")
    for s in (s_batched, s_single):
        kafka_clients.ensure_topics(s)
    produce(s_batched, batched)
    placed = produce(s_single, single)
    records = [serde.decode(v)[1] for _, v, _ in single]
    records[[t["event_id"] for t in records].index(ticks[700]["event_id"])] = None  # dead-lettered
    bars, late, _ = expected_output(records, placed)
    assert sum(map(len, late.values())) > 10

    workers = [
        Worker(s, tmp_path / f"{name}.log", WORKER_STAGES="bars")
        for name, s in (("batched", s_batched), ("single", s_single))
    ]
    try:
        out = []
        for s in (s_batched, s_single):
            got = {}
            for interval in INTERVALS:
                topic = f"md.bars.{interval}"
                want = sum(len(v) for (t, _), v in bars.items() if t == topic)
                for partition, msgs in read(s, topic, want).items():
                    got[(topic, partition)] = [m.value() for m in msgs]
            late_got = read(s, "md.ticks.late", sum(map(len, late.values())))
            dlq = read(s, "dlq.bars", 1)
            out.append(
                (
                    got,
                    {p: [m.value() for m in msgs] for p, msgs in late_got.items()},
                    [m.value() for msgs in dlq.values() for m in msgs],
                )
            )
        assert out[0] == out[1], workers[0].log_tail()
        got, late_got, dlq = out[0]
        assert got == {k: [serde.encode("bar", b) for b in v] for k, v in bars.items()}
        assert late_got == dict(late)
        assert dlq == [serde.encode("tick", ticks[700])]
        # ticks in are counted per tick, not per message
        assert workers[0].wait_metric(
            "ticktape_events_in_total", len(ticks) + PARTITIONS, stage="bars", topic="md.ticks"
        )
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], workers[0].log_tail()


def test_positions_of_batched_ticks_skip_redelivery_tick_by_tick():
    """A tick's position is offset × MAX_TICKS + index: a redelivered batch is skipped
    whole, and a batch after it counts from its first tick."""
    from stream_processors.bars import TickRuns, decode_trades
    from ticktape.core.bars import BarAggregator
    from ticktape.core.tickbatch import MAX_TICKS

    class Msg:
        def __init__(self, offset, value):
            self.offset, self.value, self.key, self.partition = offset, value, b"AAPL", 0

    ticks = random_ticks(5, 200)
    sym = [t for t in ticks if t["symbol"] == "AAPL" and t["price"] is not None][:20]
    first, second = make_batch(sym[:10]), make_batch(sym[11:])

    def add(runs, msg):
        runs.add(msg, decode_trades(serde, msg))

    cols = TickRuns(serde)
    add(cols, Msg(3, serde.encode("tick_batch", first)))
    add(cols, Msg(4, serde.encode("tick", sym[10])))
    assert [(len(ts), first) for _, ts, _, _, first in cols.runs] == [(10, 3 * MAX_TICKS), (1, 4 * MAX_TICKS)]
    agg = BarAggregator(["1m"], 10**12)  # nothing closes
    agg.process_runs(cols.runs)
    again = TickRuns(serde)
    add(again, Msg(3, serde.encode("tick_batch", first)))  # redelivered: nothing applied
    add(again, Msg(5, serde.encode("tick_batch", second)))
    agg.process_runs(again.runs)
    counted = sum(acc[6] for _start, *acc in agg.symbol_state("AAPL")["open"]["1m"])
    assert counted == 20 and agg.symbol_state("AAPL")["pos"] == 5 * MAX_TICKS + 8

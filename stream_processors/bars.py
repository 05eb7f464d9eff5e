"""The bars stage: md.ticks → md.bars.<interval> (+ md.ticks.late, dlq.bars).

One ``BarAggregator`` per input partition (``ticktape.core.bars``).  Its state lives in
the ``bars`` table — one entry per symbol, one entry per partition with the watermark
and the next input offset — written to the changelog after each batch, so a restarted
worker resumes exactly; ``InputGuard`` turns the delivered messages into a gap-free run
from that offset.

Per batch, in this order, so that a crash at any point loses nothing:
1. decode and aggregate; undecodable messages and invalid trades go to dlq.bars;
2. send bars, late ticks and dead letters, and wait until the broker has them;
3. write the changed state to the changelog and wait for it;
4. only then are the batch's offsets acked (and later committed).
A crash after 2 re-sends identical bars on restart (same event_id, same bytes); the
per-symbol positions in the state keep redelivered ticks from being counted twice.

Outputs go to the partition number of their input, so every symbol-keyed topic keeps
a symbol in one partition number whichever partitioner the tick source used.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from collections import defaultdict
from typing import cast

import faust

from ticktape import deadletter, kafka_clients, metrics
from ticktape.config import Settings
from ticktape.core.bars import BarAggregator
from ticktape.core.tickbatch import MAX_TICKS, events_of
from ticktape.serde import Serde, SerdeError

from .app import InputGuard, run_stage, save_state

STAGE = "bars"
WATERMARK_KEY = "@watermark:{}"  # table key of a partition's watermark ('@' starts no symbol)


class TickRuns:
    """The trades of one partition's messages (Ticks and TickBatches) as the runs
    ``BarAggregator.process_runs`` takes, one per message.  A tick's position is its
    message's offset × ``MAX_TICKS`` + its index in the message, so redelivery is
    skipped tick by tick."""

    def __init__(self, serde: Serde):
        self.serde = serde
        self.count = 0
        self.runs: list[tuple] = []  # (symbol, ts, price, size, first position)
        self._starts: list[int] = []  # index of each message's first tick
        self._messages: list = []

    def add(self, msg) -> None:
        """Add a message's ticks (a Heartbeat: one quote-only tick without a symbol);
        SerdeError when it is not a Tick, TickBatch or Heartbeat of this partition, or a
        tick's key is not its symbol (its symbol's other ticks may be in another partition)."""
        if msg.value is None:
            raise SerdeError("a message without a value")
        event_type, symbol, ts, price, size = self.serde.decode_trades(msg.value)
        if event_type == "heartbeat":
            hb = self.serde.decode(msg.value)[1]
            if hb["partition"] != msg.partition:
                raise SerdeError(f"a heartbeat for partition {hb['partition']} in partition {msg.partition}")
            symbol, ts, price, size = None, [hb["ts"]], [None], [None]
        elif event_type not in ("tick", "tick_batch"):
            raise SerdeError(f"expected a tick, got a {event_type}")
        elif msg.key != cast(str, symbol).encode():  # a tick's symbol: None only for a heartbeat
            raise SerdeError(
                f"the message key {msg.key!r} is not its symbol {symbol!r}: producers must key ticks by symbol"
            )
        self.runs.append((symbol, ts, price, size, msg.offset * MAX_TICKS))
        self._starts.append(self.count)
        self._messages.append((msg, event_type))  # a heartbeat's own, for the DLQ
        self.count += len(ts)

    def source(self, idx: int, topic: str) -> tuple:
        """(message, bytes) of tick ``idx``: a Tick's own bytes, or the tick taken out of
        its batch as a single Tick (for the late topic and the DLQ)."""
        k = bisect_right(self._starts, idx) - 1
        msg, event_type = self._messages[k]
        if event_type != "tick_batch":
            return msg, msg.value
        tick = events_of(*self.serde.decode(msg.value))[idx - self._starts[k]]
        return msg, self.serde.encode("tick", tick, topic=topic)


class BarsStage:
    def __init__(self, app: faust.App, s: Settings, table):
        self.app = app
        self.s = s
        self.table = table
        self.serde = Serde(s.schema_registry_url)
        self.intervals = s.interval_list
        self.grace_us = s.bar_grace_ms * 1000
        self.ahead_us = s.max_event_ahead_ms * 1000
        self.source = s.topic("md.ticks")
        self.late_topic = s.topic("md.ticks.late")
        self.dlq_topic = s.topic("dlq.bars")
        self.bar_topics = {iv: s.topic(f"md.bars.{iv}") for iv in self.intervals}
        self.guard = InputGuard(s)
        self._aggregators: dict[int, BarAggregator] = {}
        self._in = metrics.EVENTS_IN.labels(STAGE, "md.ticks")
        self._out = {iv: metrics.EVENTS_OUT.labels(STAGE, f"md.bars.{iv}") for iv in self.intervals}
        self._closed = {iv: metrics.BARS_CLOSED.labels(iv) for iv in self.intervals}
        self._late = {iv: metrics.LATE_TICKS.labels(iv) for iv in self.intervals}
        self._late_out = metrics.EVENTS_OUT.labels(STAGE, "md.ticks.late")
        self._dlq = metrics.DLQ_MESSAGES.labels(STAGE, "dlq.bars")
        self.dlq_max_bytes = s.dlq_max_bytes
        self._latency = metrics.EVENT_LATENCY.labels(STAGE)

    # -- state ---------------------------------------------------------------------
    def forget(self, partitions) -> None:
        """Drop cached aggregators (after a rebalance the table is the truth)."""
        self.guard.forget(partitions)
        for p in partitions:
            self._aggregators.pop(p, None)

    def aggregator(self, partition: int) -> BarAggregator:
        agg = self._aggregators.get(partition)
        if agg is None:
            data = self.table.data
            wm = data.get(WATERMARK_KEY.format(partition))
            self.guard.expect(self.source, partition, wm["offset"] if wm else None)
            state = {
                "watermark": wm["watermark"] if wm else None,
                "symbols": {k: v for k, v in data.items() if not k.startswith("@") and v and v["p"] == partition},
            }
            agg = self._aggregators[partition] = BarAggregator.from_state(state, self.intervals, self.grace_us)
        return agg

    def changes(self, partition: int, agg: BarAggregator) -> list[tuple[int, str, dict]]:
        """Table entries of the changed symbols, then of the watermark and next input
        offset (always, last)."""
        entries = [(partition, sym, {"p": partition, **agg.symbol_state(sym)}) for sym in agg.take_dirty()]
        entries.append(
            (
                partition,
                WATERMARK_KEY.format(partition),
                {"watermark": agg.watermark, "offset": self.guard.next_offset(self.source, partition)},
            )
        )
        return entries

    # -- processing ------------------------------------------------------------------
    async def process(self, events) -> None:
        assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.source}
        by_partition = defaultdict(list)
        for ev in events:
            if ev.message.partition in assigned:  # else its new owner processes it
                by_partition[ev.message.partition].append(ev.message)
        send = self.app.producer.send
        deliveries = []
        results = []
        for partition, messages in sorted(by_partition.items()):
            agg = self.aggregator(partition)
            runs = TickRuns(self.serde)
            for msg in await self.guard.records(self.source, partition, messages):
                try:
                    runs.add(msg)
                except SerdeError as e:
                    self._in.inc()
                    deliveries.append(await self._dead_letter(msg, str(e)))
            self._in.inc(runs.count)
            out = agg.process_runs(runs.runs, not_after=time.time_ns() // 1000 + self.ahead_us)
            results.append((partition, agg))
            now = time.time()
            for bar in out.bars:
                iv = bar["interval"]
                topic = self.bar_topics[iv]
                value = self.serde.encode("bar", bar, topic=topic)
                deliveries.append(
                    await send(topic, bar["symbol"].encode(), value, partition, bar["window_end"] / 1e6, None)
                )
                self._out[iv].inc()
                self._closed[iv].inc()
                self._latency.observe(now - (bar["window_end"] + self.grace_us) / 1e6)
            for idx, late_for in out.late:
                msg, value = runs.source(idx, self.late_topic)
                deliveries.append(await send(self.late_topic, msg.key, value, partition, msg.timestamp, None))
                self._late_out.inc()
                for iv in late_for:
                    self._late[iv].inc()
            for idx, reason in out.invalid:
                msg, value = runs.source(idx, self.dlq_topic)
                deliveries.append(await self._dead_letter(msg, reason, value))
        await asyncio.gather(*deliveries)
        await save_state(self.table, [e for partition, agg in results for e in self.changes(partition, agg)])

    async def _dead_letter(self, msg, error: str, value: bytes | None = None):
        """Send the message — or ``value``, one tick of its batch — to dlq.bars."""
        self._dlq.inc()
        dl = deadletter.of_message(msg, error, stage=STAGE, max_bytes=self.dlq_max_bytes, payload=value)
        return await self.app.producer.send(self.dlq_topic, dl.key, dl.value, None, msg.timestamp, dl.headers)


def attach(app: faust.App, s: Settings) -> None:
    ticks = app.topic(s.topic("md.ticks"), key_serializer="raw", value_serializer="raw")
    # keys and values are JSON (the table default): exact for the state's ints and floats
    table = app.Table("bars", partitions=kafka_clients.topic_spec("md.ticks").partitions)
    stage = BarsStage(app, s, table)

    run_stage(app, s, stage, ticks, name=STAGE)

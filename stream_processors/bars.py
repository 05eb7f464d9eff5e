"""The bars stage: md.ticks → md.bars.<interval> (+ md.ticks.late, dlq.bars).

One ``BarAggregator`` per input partition (``ticktape.core.bars``).  Its state lives in
the ``bars`` table — one entry per symbol, one watermark entry per partition — written
to the changelog after each batch, so a restarted worker resumes exactly.

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
from collections import defaultdict

import faust

from ticktape import kafka_clients, metrics
from ticktape.config import Settings
from ticktape.core.bars import BarAggregator
from ticktape.serde import Serde, SerdeError

from .app import agent

STAGE = "bars"
WATERMARK_KEY = "@watermark:{}"  # table key of a partition's watermark ('@' starts no symbol)


def dead_letter_headers(error: str, message) -> list[tuple[str, bytes]]:
    return [("ticktape.error", error.encode()),
            ("ticktape.source.topic", message.topic.encode()),
            ("ticktape.source.partition", str(message.partition).encode()),
            ("ticktape.source.offset", str(message.offset).encode())]


class BarsStage:
    def __init__(self, app: faust.App, s: Settings, table):
        self.app = app
        self.s = s
        self.table = table
        self.serde = Serde(s.schema_registry_url)
        self.intervals = s.interval_list
        self.grace_us = s.bar_grace_ms * 1000
        self.source = s.topic("md.ticks")
        self.late_topic = s.topic("md.ticks.late")
        self.dlq_topic = s.topic("dlq.bars")
        self.bar_topics = {iv: s.topic(f"md.bars.{iv}") for iv in self.intervals}
        self._aggregators: dict[int, BarAggregator] = {}
        self._in = metrics.EVENTS_IN.labels(STAGE, "md.ticks")
        self._out = {iv: metrics.EVENTS_OUT.labels(STAGE, f"md.bars.{iv}") for iv in self.intervals}
        self._closed = {iv: metrics.BARS_CLOSED.labels(iv) for iv in self.intervals}
        self._late = {iv: metrics.LATE_TICKS.labels(iv) for iv in self.intervals}
        self._late_out = metrics.EVENTS_OUT.labels(STAGE, "md.ticks.late")
        self._dlq = metrics.DLQ_MESSAGES.labels(STAGE, "dlq.bars")
        self._latency = metrics.EVENT_LATENCY.labels(STAGE)

    # -- state ---------------------------------------------------------------------
    def forget(self, partitions) -> None:
        """Drop cached aggregators (after a rebalance the table is the truth)."""
        for p in partitions:
            self._aggregators.pop(p, None)

    def aggregator(self, partition: int) -> BarAggregator:
        agg = self._aggregators.get(partition)
        if agg is None:
            data = self.table.data
            wm = data.get(WATERMARK_KEY.format(partition))
            state = {"watermark": wm["watermark"] if wm else None,
                     "symbols": {k: v for k, v in data.items()
                                 if not k.startswith("@") and v["p"] == partition}}
            agg = self._aggregators[partition] = BarAggregator.from_state(
                state, self.intervals, self.grace_us)
        return agg

    def save(self, partition: int, agg: BarAggregator) -> list:
        """Write changed symbols, then the watermark, to the table and its changelog."""
        futures = []
        data = self.table.data
        for sym in agg.take_dirty():
            value = {"p": partition, **agg.symbol_state(sym)}
            data[sym] = value
            futures.append(self.table.send_changelog(partition, sym, value))
        key, value = WATERMARK_KEY.format(partition), {"watermark": agg.watermark}
        if data.get(key) != value:
            data[key] = value
            futures.append(self.table.send_changelog(partition, key, value))
        return futures

    # -- processing ------------------------------------------------------------------
    async def process(self, events) -> None:
        self._in.inc(len(events))
        assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.source}
        by_partition = defaultdict(list)
        for ev in events:
            if ev.message.partition in assigned:  # else its new owner processes it
                by_partition[ev.message.partition].append(ev)
        send = self.app.producer.send
        deliveries = []
        results = []
        for partition, evs in sorted(by_partition.items()):
            ticks, positions, sources = [], [], []
            for ev in evs:
                msg = ev.message
                try:
                    event_type, record = self.serde.decode(msg.value)
                    if event_type != "tick":
                        raise SerdeError(f"expected a tick, got a {event_type}")
                except SerdeError as e:
                    deliveries.append(await self._dead_letter(msg, str(e)))
                    continue
                ticks.append(record)
                positions.append(msg.offset)
                sources.append(msg)
            agg = self.aggregator(partition)
            out = agg.process(ticks, positions)
            results.append((partition, agg))
            now = time.time()
            for bar in out.bars:
                iv = bar["interval"]
                topic = self.bar_topics[iv]
                value = self.serde.encode("bar", bar, topic=topic)
                deliveries.append(await send(topic, bar["symbol"].encode(), value, partition,
                                             bar["window_end"] / 1e6, None))
                self._out[iv].inc()
                self._closed[iv].inc()
                self._latency.observe(now - (bar["window_end"] + self.grace_us) / 1e6)
            for idx, late_for in out.late:
                msg = sources[idx]
                deliveries.append(await send(self.late_topic, msg.key, msg.value, partition,
                                             msg.timestamp, None))
                self._late_out.inc()
                for iv in late_for:
                    self._late[iv].inc()
            for idx, reason in out.invalid:
                deliveries.append(await self._dead_letter(sources[idx], reason))
        await asyncio.gather(*deliveries)
        changelog = [fut for partition, agg in results for fut in self.save(partition, agg)]
        await asyncio.gather(*changelog)

    async def _dead_letter(self, msg, error: str):
        self._dlq.inc()
        return await self.app.producer.send(
            self.dlq_topic, msg.key, msg.value, None, msg.timestamp,
            dead_letter_headers(error, msg))


def attach(app: faust.App, s: Settings) -> None:
    ticks = app.topic(s.topic("md.ticks"), key_serializer="raw", value_serializer="raw")
    # keys and values are JSON (the table default): exact for the state's ints and floats
    table = app.Table("bars", partitions=kafka_clients.topic_spec("md.ticks").partitions)
    stage = BarsStage(app, s, table)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        stage.forget({tp.partition for tp in revoked if tp.topic == stage.source})

    @agent(app, ticks, name=STAGE)
    async def bars(stream):
        async for events in stream.take_events(s.processor_batch_size, within=s.processor_batch_ms / 1000):
            await stage.process(events)

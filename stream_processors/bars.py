"""The bars stage: md.ticks → md.bars.<interval> (+ md.ticks.late, dlq.bars).

One ``BarAggregator`` per input partition (``ticktape.core.bars``).  Its state lives in
the ``bars`` table — one entry per symbol, one entry per partition with the watermark
and the next input offset — written to the changelog after each batch, so a restarted
worker resumes exactly.  The runner (``runner.py``) hands over each partition's messages
once, in offset order, from that offset, and sends and saves what a batch made in the safe
order.  Undecodable messages and invalid trades go to dlq.bars.  A crash after the sends
re-sends identical bars on restart (same event_id, same bytes); the per-symbol positions
in the state keep redelivered ticks from being counted twice.

Outputs go to the partition number of their input, so every symbol-keyed topic keeps
a symbol in one partition number whichever partitioner the tick source used.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from functools import partial
from typing import cast

import faust

from ticktape import kafka_clients, metrics
from ticktape.config import Settings
from ticktape.core.bars import BarAggregator
from ticktape.core.tickbatch import MAX_TICKS, events_of
from ticktape.serde import Serde, SerdeError

from .runner import Entry, Outbox, Stage, run

STAGE = "bars"
WATERMARK_KEY = "@watermark:{}"  # table key of a partition's watermark ('@' starts no symbol)


Trades = tuple[str, str | None, list, list, list]  # a message's (event type, symbol, ts, price, size)


def decode_trades(serde: Serde, msg) -> Trades:
    """A message's ticks (a Heartbeat: one quote-only tick without a symbol); SerdeError
    when it is not a Tick, TickBatch or Heartbeat of this partition, or a tick's key is not
    its symbol (its symbol's other ticks may be in another partition)."""
    if msg.value is None:
        raise SerdeError("a message without a value")
    event_type, symbol, ts, price, size = serde.decode_trades(msg.value)
    if event_type == "heartbeat":
        hb = serde.decode(msg.value)[1]
        if hb["partition"] != msg.partition:
            raise SerdeError(f"a heartbeat for partition {hb['partition']} in partition {msg.partition}")
        return event_type, None, [hb["ts"]], [None], [None]
    if event_type not in ("tick", "tick_batch"):
        raise SerdeError(f"expected a tick, got a {event_type}")
    if msg.key != cast(str, symbol).encode():  # a tick's symbol: None only for a heartbeat
        raise SerdeError(
            f"the message key {msg.key!r} is not its symbol {symbol!r}: producers must key ticks by symbol"
        )
    return event_type, symbol, ts, price, size


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

    def add(self, msg, trades: Trades) -> None:
        """Add a message's ticks, as ``decode_trades`` gives them."""
        event_type, symbol, ts, price, size = trades
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


class BarsStage(Stage):
    name = STAGE
    dlq = "dlq.bars"

    def __init__(self, s: Settings, table):
        super().__init__(s, table)
        self.intervals = s.interval_list
        self.grace_us = s.bar_grace_ms * 1000
        self.ahead_us = s.max_event_ahead_ms * 1000
        self.decoders[s.topic("md.ticks")] = partial(decode_trades, self.serde)
        self.late_topic = s.topic("md.ticks.late")
        self.dlq_topic = s.topic(self.dlq)
        self._bars = {iv: self.sink(f"md.bars.{iv}") for iv in self.intervals}
        self._late_out = self.sink("md.ticks.late")
        self._aggregators: dict[int, BarAggregator] = {}
        self._batch: dict[int, TickRuns] = {}  # this batch's trades per partition
        self._closed = {iv: metrics.BARS_CLOSED.labels(iv) for iv in self.intervals}
        self._late = {iv: metrics.LATE_TICKS.labels(iv) for iv in self.intervals}
        self._latency = metrics.EVENT_LATENCY.labels(STAGE)

    # -- state ---------------------------------------------------------------------
    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self._aggregators.pop(p, None)

    def aggregator(self, partition: int) -> BarAggregator:
        agg = self._aggregators.get(partition)
        if agg is None:
            data = self.table.data
            wm = data.get(WATERMARK_KEY.format(partition))
            state = {
                "watermark": wm["watermark"] if wm else None,
                "symbols": {k: v for k, v in data.items() if not k.startswith("@") and v and v["p"] == partition},
            }
            agg = self._aggregators[partition] = BarAggregator.from_state(state, self.intervals, self.grace_us)
        return agg

    def saved_offset(self, topic: str, partition: int) -> int | None:
        wm = self.table.data.get(WATERMARK_KEY.format(partition))
        return wm["offset"] if wm else None

    def offset_entries(self, positions: list[tuple[str, int, int]]) -> list[Entry]:
        """A partition's watermark and next input offset: one entry, after its symbols'."""
        return [
            (p, WATERMARK_KEY.format(p), {"watermark": self.aggregator(p).watermark, "offset": n})
            for _, p, n in positions
        ]

    # -- processing ------------------------------------------------------------------
    def fold(self, msg, event: Trades, out: Outbox) -> None:
        runs = self._batch.get(msg.partition)
        if runs is None:
            runs = self._batch[msg.partition] = TickRuns(self.serde)
        runs.add(msg, event)
        out.extra_in += len(event[2]) - 1

    async def finish(self, out: Outbox) -> None:
        batch, self._batch = self._batch, {}
        for partition, runs in sorted(batch.items()):
            agg = self.aggregator(partition)
            result = agg.process_runs(runs.runs, not_after=time.time_ns() // 1000 + self.ahead_us)
            now = time.time()
            for bar in result.bars:
                iv = bar["interval"]
                out.send(self._bars[iv], "bar", bar, bar["symbol"], partition)
                self._closed[iv].inc()
                self._latency.observe(now - (bar["window_end"] + self.grace_us) / 1e6)
            for idx, late_for in result.late:
                msg, value = runs.source(idx, self.late_topic)
                out.send_raw(self._late_out, msg.key, value, partition, msg.timestamp)
                for iv in late_for:
                    self._late[iv].inc()
            for idx, reason in result.invalid:
                msg, value = runs.source(idx, self.dlq_topic)
                out.dead_letter(msg, reason, value)
            for sym in agg.take_dirty():
                out.changes[sym] = (partition, {"p": partition, **agg.symbol_state(sym)})


def attach(app: faust.App, s: Settings) -> None:
    # keys and values are JSON (the table default): exact for the state's ints and floats
    table = app.Table("bars", partitions=kafka_clients.topic_spec("md.ticks").partitions)
    run(app, s, BarsStage(s, table))

"""The stage runner: every stage is its pure part, a ``Stage``, run by one ``Runner``.

A stage decodes a message (``decoders``, one per input topic), folds it into its state
(``fold``, which puts what goes out in the ``Outbox``: events, dead letters, changed table
entries), and ends the batch (``finish``).  The runner does the rest, in this order, so
that a crash at any point loses nothing:
1. per batch, the input partitions this worker still owns, each once and in offset order
   from the next offset the stage has folded (``InputGuard``), partition by partition;
2. decode and fold; what cannot be decoded goes to the stage's dead-letter topic;
3. send the outbox (not waited for) and keep the batch's changed entries, merged by key
   with those of the batches since the last checkpoint;
4. at a checkpoint (every PROCESSOR_CHECKPOINT_MS, once PROCESSOR_BATCH_SIZE entries are
   kept, or after every batch of a stage with ``checkpoint_each_batch``): wait until the
   broker has everything sent, then write the kept entries, then the inputs' next
   offsets, with ``save_state``, and wait for that too.
The venue checkpoints every batch (what it did at the venue is not on the log), and so do
the four trading desks (strategy, risk, execution, portfolio): with a checkpoint a second,
a worker killed mid-run and restarted left the risk desk holding its account stream back
for good (test_trading_agents and test_venue_agents across a kill, 3 runs of 3; with a
checkpoint each batch, as before, they pass).  Why is not known yet.  Bars, indicators and
predict, where the per-batch save cost most, checkpoint once a second.
Faust acks (and later commits) a batch's offsets once it is processed, so its committed
offsets may run ahead of the last checkpoint: after a crash the guard re-reads from the
next offsets saved with the state, the stage folds that input again from the saved state
and re-sends identical events (same event ids, same bytes), which every consumer drops or
stores once.  This is Kafka Streams' and Quix Streams' commit interval: the state and its
changelog are written once per interval instead of once per batch.

Not a stage (it is not in ``STAGES``): every stage module imports it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import faust

from ticktape import deadletter, metrics
from ticktape.config import Settings
from ticktape.serde import Serde, SerdeError
from ticktape.validate import Validator

from .app import InputGuard, agent, crash_on_error, delivered, save_state

log = logging.getLogger(__name__)
OFFSET_KEY = (
    "@offset:{}:{}"  # table key of an input partition's next offset ('@' starts no symbol, account or interval)
)
TAIL_CHECK_S = 1.0  # how often each stage looks for input the consumer has not delivered
TAIL_BUSY_CHECKS = 10  # checks passed over in a row while a batch is being processed, at most
PARTITION_HEADER = "ticktape.partition"  # a symbol's partition number on symbol-keyed topics
LATE_HEADER = "ticktape.late"  # on a ledger Fill: applied where it arrived, not in canonical order
DLQ = "dlq.trading"  # the trading stages' dead letters

Entry = tuple[int, str, Any]  # a ``save_state`` entry: (partition, key, value or None)


class Sink:
    """An output topic of a stage, with its counter of events sent."""

    __slots__ = ("name", "counter", "sent")

    def __init__(self, s: Settings, stage: str, topic: str):
        self.name = s.topic(topic)
        self.counter = metrics.EVENTS_OUT.labels(stage, topic)
        self.sent = 0  # this batch's, counted once per batch


class Outbox:
    """What a batch sends and saves, in the order the stage puts it there."""

    def __init__(self, s: Settings, stage: str, dlq: str, serde: Serde):
        self.stage, self.serde = stage, serde
        self.dlq_topic = s.topic(dlq)
        self.dlq_max_bytes = s.dlq_max_bytes
        self._dlq = metrics.DLQ_MESSAGES.labels(stage, dlq)
        self.sends: list[tuple] = []  # the producer's arguments
        self.changes: dict[str, tuple[int, Any]] = {}  # table key -> (partition, value or None: delete)
        self.extra_in = 0  # events beyond one a message (a TickBatch's ticks), counted in

    def send(
        self, sink: Sink, event_type: str, record: dict, key: str, partition: int, headers: list | None = None
    ) -> None:
        """An event, at its event time."""
        value = self.serde.encode(event_type, record, topic=sink.name)
        self.sends.append((sink.name, key.encode(), value, partition, record["ts"] / 1e6, headers))
        sink.sent += 1

    def send_raw(self, sink: Sink, key: bytes | None, value: bytes, partition: int, timestamp: float | None) -> None:
        """Bytes as they are (an input tick, forwarded)."""
        self.sends.append((sink.name, key, value, partition, timestamp, None))
        sink.sent += 1

    def dead_letter(self, msg, error: str, payload: bytes | None = None) -> None:
        """The message (or ``payload``, a part of it) to the stage's dead-letter topic."""
        log.warning("%s: dead letter from %s[%s]@%s: %s", self.stage, msg.topic, msg.partition, msg.offset, error)
        self._dlq.inc()
        dl = deadletter.of_message(msg, error, stage=self.stage, max_bytes=self.dlq_max_bytes, payload=payload)
        self.sends.append((self.dlq_topic, dl.key, dl.value, None, msg.timestamp, dl.headers))


class Stage(ABC):
    """A stage's pure part, which ``Runner`` drives.  A subclass sets ``name`` (the agent's
    and the metrics' label) and ``dlq``, declares its inputs with ``accept`` (or its own
    decoder in ``decoders``) and its outputs with ``sink``, and implements ``fold``,
    ``finish`` and ``forget``.  Its next input offsets live in its table under
    ``OFFSET_KEY`` unless it overrides ``saved_offset`` and ``offset_entries``."""

    name: str
    dlq: str
    checkpoint_each_batch = False  # True: a checkpoint after every batch (a stage whose effects leave the log)

    def __init__(self, s: Settings, table):
        self.s, self.table = s, table
        self.serde = Serde(s.schema_registry_url)
        self.validator = Validator(s)
        self.decoders: dict[str, Callable[[Any], Any]] = {}  # input topic (full name) -> its decoder
        self.sinks: list[Sink] = []

    def accept(self, topic: str, *event_types: str) -> None:
        """Read ``topic``: each message one of ``event_types``, valid (``Validator``)."""
        decode, check = self.serde.decode, self.validator.check
        wanted = " or ".join(event_types)

        def decoder(msg) -> tuple[str, dict]:
            event_type, record = decode(msg.value)  # None: SerdeError("empty message")
            if event_type not in event_types:
                raise SerdeError(f"expected {wanted} on {topic}, got a {event_type}")
            check(event_type, record)
            return event_type, record

        self.decoders[self.s.topic(topic)] = decoder

    def sink(self, topic: str) -> Sink:
        sink = Sink(self.s, self.name, topic)
        self.sinks.append(sink)
        return sink

    async def begin(self) -> None:  # noqa: B027  # optional: most stages need nothing then
        """Before a batch's input is read."""

    @abstractmethod
    def fold(self, msg, event, out: Outbox) -> None:
        """Fold one decoded message (``event``, what its topic's decoder returned)."""

    @abstractmethod
    async def finish(self, out: Outbox) -> None:
        """After the batch's last message: what goes out at the end, the changed entries."""

    @abstractmethod
    def forget(self, partitions: set[int]) -> None:
        """Drop what is cached of these input partitions (after a rebalance the table is the truth)."""

    def saved_offset(self, topic: str, partition: int) -> int | None:
        saved = self.table.data.get(OFFSET_KEY.format(topic, partition))
        return saved["offset"] if saved else None

    def offset_entries(self, positions: list[tuple[str, int, int]]) -> list[Entry]:
        """``save_state`` entries of the inputs' ``(topic, partition, next offset)``, each in its
        input's partition number; they go last, so that an entry never claims input the
        state does not hold."""
        return [(p, OFFSET_KEY.format(t, p), {"offset": n}) for t, p, n in positions]


class Runner:
    """Runs a ``Stage`` as the Faust agent ``stage.name`` on its input topics (see the
    module doc).  ``lock`` keeps apart everything that changes the stage's state: the
    batches, the lost tails (``tails``), the checkpoints and whatever else the stage does
    (the venue's updates)."""

    def __init__(self, app: faust.App, s: Settings, stage: Stage):
        self.app, self.stage = app, stage
        self.guard = InputGuard(s)
        self.lock = asyncio.Lock()
        self._busy_checks = 0
        self.out = Outbox(s, stage.name, stage.dlq, stage.serde)
        cut = len(s.topic_prefix)
        self._in = {topic: metrics.EVENTS_IN.labels(stage.name, topic[cut:]) for topic in stage.decoders}
        self.checkpoint_s = s.processor_checkpoint_ms / 1000
        self.max_kept = s.processor_batch_size  # kept entries: past this many, a checkpoint
        self._kept: dict[str, tuple[int, Any]] = {}  # table key -> (partition, value or None), since the checkpoint
        self._inputs: set[tuple[str, int]] = set()  # input partitions folded since the checkpoint
        self._deliveries: list = []  # of what was sent since the checkpoint
        self._checkpointed = time.monotonic()
        self._tails_deferred = False  # the last tick checkpointed instead of looking for lost tails

    async def process(self, messages) -> None:
        """One batch of input messages (Faust's or the guard's)."""
        stage, out = self.stage, self.out
        await stage.begin()
        assigned = {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}
        runs = await self.guard.runs(messages, assigned, stage.saved_offset)
        fold = stage.fold
        for topic, _, records in runs:
            decode = stage.decoders[topic]
            for msg in records:
                try:
                    event = decode(msg)
                except SerdeError as e:
                    out.dead_letter(msg, str(e))
                    continue
                fold(msg, event, out)
            self._in[topic].inc(len(records) + out.extra_in)  # each input record once, however often it came
            out.extra_in = 0
        await stage.finish(out)
        self._inputs.update((t, p) for t, p, _ in runs)
        await self.flush(checkpoint=self.due())

    def due(self) -> bool:
        return (
            self.stage.checkpoint_each_batch
            or time.monotonic() - self._checkpointed >= self.checkpoint_s
            or len(self._kept) >= self.max_kept
        )

    async def flush(self, checkpoint: bool = True) -> None:
        """Send the outbox and keep its changed entries; with ``checkpoint``, then wait until
        the broker has everything sent since the last checkpoint, and save the kept entries
        and the folded inputs' next offsets (``save_state``), and wait for that too."""
        out, send = self.out, self.app.producer.send
        sends, out.sends = out.sends, []
        self._deliveries += [await send(*args) for args in sends]
        for sink in self.stage.sinks:
            if sink.sent:
                sink.counter.inc(sink.sent)
                sink.sent = 0
        self._kept.update(out.changes)
        out.changes = {}
        if checkpoint:
            await self.checkpoint()

    async def checkpoint(self) -> None:
        deliveries, self._deliveries = self._deliveries, []
        await delivered(deliveries)
        kept, self._kept = self._kept, {}
        inputs, self._inputs = self._inputs, set()
        self._checkpointed = time.monotonic()
        next_offset = self.guard.next_offset
        positions = [(t, p, next_offset(t, p)) for t, p in sorted(inputs)]
        await save_state(
            self.stage.table,
            [(p, key, value) for key, (p, value) in kept.items()] + self.stage.offset_entries(positions),
        )

    def forget(self, partitions: set[int]) -> None:
        """Drop what is kept of these input partitions: their new owner (or this worker,
        assigned them again) resumes from their last checkpoint."""
        self._kept = {k: (p, v) for k, (p, v) in self._kept.items() if p not in partitions}
        self._inputs = {(t, p) for t, p in self._inputs if p not in partitions}
        self.guard.forget(partitions)
        self.stage.forget(partitions)

    async def tick(self) -> None:
        """Once a ``TAIL_CHECK_S``: a checkpoint when one is due with nothing coming in, and
        the lost tails (``tails``).  The input stands still during a checkpoint, which is no
        sign of a lost tail, so a tick that checkpoints leaves the tails to the next tick, but
        never two ticks in a row: a stage whose input keeps coming (one partition's lost tail
        among others that flow) would else never look."""
        if (self._kept or self._inputs or self._deliveries) and self.due() and not self.lock.locked():
            async with self.lock:
                await self.checkpoint()
            if not self._tails_deferred:
                self._tails_deferred = True
                return
        self._tails_deferred = False
        await self.tails()

    async def tails(self) -> None:
        """Process the records of input partitions that stood still over the last
        TAIL_STILL_CHECKS checks but have more in the log (``InputGuard.tails``): Faust can
        lose taken messages, and a lost tail has no later message to reveal it.  While a
        batch is being processed its input has not moved yet (it moves when the batch is
        folded): the check waits for it, up to TAIL_BUSY_CHECKS times in a row.  An
        assigned partition nothing has come from is watched from the offset saved with the
        state (``InputGuard.watch``)."""
        if self.lock.locked() and self._busy_checks < TAIL_BUSY_CHECKS:
            self._busy_checks += 1
            return
        self._busy_checks = 0
        assigned = {(tp.topic, tp.partition) for tp in self.app.consumer.assignment() if tp.topic in self._in}
        if not self.app.rebalancing:  # Faust ends a rebalance once the tables are recovered
            await self.guard.watch(assigned, self.stage.saved_offset)
        records = await self.guard.tails(assigned)
        if records:
            async with self.lock:
                await self.process(records)


def run(app: faust.App, s: Settings, stage: Stage) -> Runner:
    """Run ``stage`` on its inputs in batches (up to PROCESSOR_BATCH_SIZE events or
    PROCESSOR_BATCH_MS), its lost tails every ``TAIL_CHECK_S``; after a rebalance the stage
    forgets what it knew of the input partitions it lost."""
    runner = Runner(app, s, stage)
    topic = app.topic(*stage.decoders, key_serializer="raw", value_serializer="raw")

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust awaits async receivers
    async def on_revoked(sender, revoked, **kwargs) -> None:
        runner.forget({tp.partition for tp in revoked if tp.topic in stage.decoders})

    @agent(app, topic, name=stage.name)
    async def batches(stream):
        async for events in stream.take_events(s.processor_batch_size, within=s.processor_batch_ms / 1000):
            async with runner.lock:
                await runner.process([ev.message for ev in events])

    @app.timer(TAIL_CHECK_S, name=f"{stage.name}.tick")
    async def tick() -> None:
        await crash_on_error(app, stage.name, runner.tick())

    return runner


def forget_symbols(partition_of: dict[str, int], partitions: set[int]) -> list[str]:
    """Drop the symbols of these input partitions from ``partition_of``; the symbols dropped."""
    gone = [sym for sym, p in partition_of.items() if p in partitions]
    for sym in gone:
        del partition_of[sym]
    return gone


def partition_header(partition: int) -> list[tuple[str, bytes]]:
    return [(PARTITION_HEADER, str(partition).encode())]


def header(msg, name: str) -> bytes | None:
    headers = msg.headers or ()
    for k, v in headers.items() if isinstance(headers, dict) else headers:
        if k == name:
            return v
    return None


def header_partition(msg) -> int | None:
    v = header(msg, PARTITION_HEADER)
    return None if v is None else int(v)

"""The Faust app of the stream processors and the worker that runs it.

Each stage is a module ``stream_processors/<stage>.py`` with ``attach(app, settings)``
that adds its agents (and tables) to the one app; ``STAGES`` lists them in flow order.
State lives in Faust tables in memory, rebuilt from their changelog topics on start.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import faust
import uvloop
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ticktape import kafka_clients, metrics
from ticktape.config import ConfigError, Settings

from .consumer import Consumer

log = logging.getLogger(__name__)

RECOVERY_REPORT_S = 5.0  # how often a recovering worker says how far it is
PRODUCER_BATCH_BYTES = 512 * 1024  # a record batch of the worker's producer: well under the broker's 1 MiB
MAX_STATE_RECORD = 900_000  # bytes of one changelog value: under the broker's 1 MiB message limit
# ``InputGuard.tails`` calls (one a TAIL_CHECK_S) a partition's next offset must stand still
# before its tail is read: a stage behind its input (the consumer has not fetched it yet)
# moves within seconds, a lost tail never does
TAIL_STILL_CHECKS = 5
STAGES = ["bars", "indicators", "predict", "strategy", "risk", "execution", "portfolio"]


def selected_stages(s: Settings) -> list[str]:
    """The stages WORKER_STAGES names (all when empty), in flow order."""
    wanted = [w.strip() for w in s.worker_stages.split(",") if w.strip()]
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        raise ConfigError(f"WORKER_STAGES has {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    return [stage for stage in STAGES if not wanted or stage in wanted]


def build_app(s: Settings) -> faust.App:
    ticks = kafka_clients.topic_spec("md.ticks")
    app = faust.App(
        s.group("worker"),
        **kafka_clients.faust_broker_settings(s),
        store="memory://",
        datadir=str(Path(s.home) / "faust"),  # not the working directory
        # tables' changelogs are co-partitioned with the symbol-keyed topics
        topic_partitions=ticks.partitions,
        topic_replication_factor=ticks.replication_factor,
        topic_disable_leader=True,
        broker_session_timeout=s.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,  # /metrics is served by ticktape.metrics
        autodiscover=False,
        # on stop, do not wait for events taken but not yet processed: their offsets are
        # not committed, so a restart redelivers them and the stages' state skips repeats
        stream_wait_empty=False,
        producer_linger=s.kafka_linger_ms / 1000,  # Faust's default 0 sends a record batch per await
        # Faust's 16 KiB record batches took a broker round trip each for a few state records
        # (one symbol's indicators state is ~1.7 KB); librdkafka's producers batch up to 1 MB
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
    )
    kafka_clients.faust_fetch_max_wait(app, s.kafka_fetch_max_wait_ms)
    app.transport.Consumer = Consumer  # type: ignore[misc]  # hands most messages over without two tasks each
    # Table changelog records wait in the producer's buffer; past its bound the conductor
    # flushes before taking the next message, and warns each time.  ``save_state`` writes up
    # to one entry per event of a batch and waits for them all, so the batch bounds the
    # buffer: Faust's 100 would only log a warning for most batches.
    app.producer.buffer.max_messages = 2 * s.processor_batch_size

    @app.task
    async def report_recovery() -> None:
        """While the tables are restored from their changelogs (no stage runs yet): how
        many records are left, on /metrics and in the log every RECOVERY_REPORT_S."""
        while True:
            recovery = app.tables.recovery  # type: ignore[attr-defined]  # TableManager has it, TableManagerT not
            remaining = recovery.active_remaining_total() if recovery.in_recovery else 0
            metrics.RECOVERY_REMAINING.set(remaining)
            if remaining:
                log.info("worker: restoring the stages' state: %d changelog records to go", remaining)
            await asyncio.sleep(RECOVERY_REPORT_S)

    for stage in selected_stages(s):
        importlib.import_module(f"stream_processors.{stage}").attach(app, s)
    return app


def agent(app: faust.App, channel, *, name: str):
    """``app.agent`` whose crash stops the worker with exit code 1.

    Faust would otherwise restart the agent or leave the worker hanging; a restarted
    worker resumes from the committed offsets and the tables' changelogs instead.
    """

    def decorate(fun):
        async def guarded(stream):
            await crash_on_error(app, name, fun(stream))

        guarded.__name__ = guarded.__qualname__ = name
        guarded.__module__ = fun.__module__
        return app.agent(channel, name=name)(guarded)

    return decorate


async def crash_on_error(app: faust.App, name: str, work) -> None:
    """Await ``work``; an exception stops the worker (exit code 1)."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.critical("agent %s crashed: %r; stopping the worker", name, exc, exc_info=exc)
        metrics.PROCESSING_ERRORS.labels(name).inc()
        await app.crash(exc)


@dataclass(frozen=True)
class Record:
    """An input message ``InputGuard`` read itself, with the attributes of a Faust message
    that the stages use."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None  # seconds
    headers: list | dict | None = None


Run = tuple[str, int, list]  # an input partition's topic, number and gap-free messages (see InputGuard.records)


class InputGuard:
    """Hands a stage each input partition's messages once and in offset order.

    Faust can lose messages it took from Kafka around startup and rebalances (its
    streams skip, and ack, messages fetched while flow control is off or of an older
    consumer generation: the likely path) and then commits past the hole.  The guard knows the next
    offset each partition must deliver (the stage saves it with its state), drops
    redelivered messages, and reads a hole's records straight from Kafka.  A partition
    never seen starts at its first retained offset, so a stage without state rebuilds
    it from the whole partition.  A lost tail (no later message) is read by ``tails``.

    Where a stage keeps its next offsets is the stage's (``stream_processors/runner.py``).
    """

    def __init__(self, s: Settings, still_checks: int = TAIL_STILL_CHECKS):
        self.s = s
        self.still_checks = still_checks
        self._next: dict[tuple[str, int], int] = {}
        self._loaded: set[tuple[str, int]] = set()  # input partitions whose next offset is read from the table
        self._consumer = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="input-guard")  # one consumer, one thread
        self._still: dict[tuple[str, int], tuple[int, int]] = {}  # next offset, ``tails`` calls it stood still

    def expect(self, topic: str, partition: int, offset: int | None) -> None:
        """The next offset of a partition, from the stage's saved state (None: unknown)."""
        if offset is None:
            self._next.pop((topic, partition), None)
        else:
            self._next[(topic, partition)] = offset

    def next_offset(self, topic: str, partition: int) -> int:
        """The next offset of a partition the guard has handed records of."""
        return self._next[(topic, partition)]

    def forget(self, partitions) -> None:
        """Read these partitions' next offsets from the table again (after a rebalance)."""
        self._loaded = {(t, p) for t, p in self._loaded if p not in partitions}
        self._next = {(t, p): n for (t, p), n in self._next.items() if p not in partitions}

    async def runs(self, messages, assigned: set[tuple[str, int]], saved) -> list[Run]:
        """The messages of the ``assigned`` input partitions (the others' new owners process
        them) grouped per partition (sorted), each as ``records`` makes them; ``saved(topic,
        partition)`` is the next offset the stage's state holds for a partition not seen since
        it was assigned."""
        by_input = defaultdict(list)
        for m in messages:
            by_input[(m.topic, m.partition)].append(m)
        out = []
        for tp, msgs in sorted(by_input.items()):
            if tp not in assigned:
                continue
            topic, partition = tp
            self._load(tp, saved)
            out.append((topic, partition, await self.records(topic, partition, msgs)))
        return out

    def _load(self, tp: tuple[str, int], saved) -> None:
        if tp not in self._loaded:
            self.expect(*tp, saved(*tp))
            self._loaded.add(tp)

    async def watch(self, assigned: set[tuple[str, int]], saved) -> None:
        """Take the assigned partitions nothing has come from since their assignment into
        ``tails``' watch, from the next offset their stage saved (``saved``, as ``runs``) or
        their first.  Faust's commits run ahead of the stage's checkpoints: after a crash
        it may deliver nothing more of a partition whose last records the state never
        held, and no later message would show the hole.  Call it only once the tables
        are recovered (the saved offsets are in them)."""
        loop = asyncio.get_running_loop()
        for tp in sorted(assigned - self._loaded):
            self._load(tp, saved)
            if tp not in self._next:
                self._next[tp] = await loop.run_in_executor(self._thread, self._first_offset, *tp)

    async def records(self, topic: str, partition: int, messages) -> list:
        """The partition's messages (Faust ``Message`` objects, in delivery order) as
        a gap-free run starting at the expected offset: the messages themselves, and a
        ``Record`` of each re-read one."""
        loop = asyncio.get_running_loop()
        nxt = self._next.get((topic, partition))
        if nxt is None:
            nxt = await loop.run_in_executor(self._thread, self._first_offset, topic, partition)
        out = []
        for m in messages:
            if m.offset < nxt:
                continue  # delivered before
            if m.offset > nxt:
                missing = await loop.run_in_executor(self._thread, self._read, {(topic, partition): (nxt, m.offset)})
                if missing:
                    log.warning(
                        "%s[%d]: re-read %d records at offsets %d..%d that the consumer skipped or had "
                        "committed past the stage's last checkpoint",
                        topic,
                        partition,
                        len(missing),
                        nxt,
                        m.offset - 1,
                    )
                out += missing
            out.append(m)
            nxt = m.offset + 1
        self._next[(topic, partition)] = nxt
        return out

    async def tails(self, assigned: set[tuple[str, int]]) -> list[Record]:
        """Records past the next offset of each assigned partition whose next offset has
        stood still over the last ``still_checks`` calls (the rest are still being
        delivered), up to PROCESSOR_BATCH_SIZE of them.  A partition read starts counting
        again: an idle one is read once every ``still_checks`` calls."""
        still, counts = {}, {}
        for tp in assigned:
            nxt = self._next.get(tp)
            if nxt is None:
                continue
            last, n = self._still.get(tp, (None, -1))
            n = n + 1 if last == nxt else 0
            if n >= self.still_checks:
                still[tp], n = nxt, 0
            counts[tp] = (nxt, n)
        self._still = counts
        if not still:
            return []
        loop = asyncio.get_running_loop()
        ranges: dict[tuple[str, int], tuple[int, int | None]] = {tp: (nxt, None) for tp, nxt in still.items()}
        records = await loop.run_in_executor(
            self._thread, self._read, ranges, self.s.processor_batch_size
        )  # a batch; the rest, if still lost, next time
        if records:
            log.warning(
                "%s: read %d records that the consumer had not delivered",
                ", ".join(f"{t}[{p}]@{still[(t, p)]}" for t, p in sorted({(r.topic, r.partition) for r in records})),
                len(records),
            )
        return records

    def _client(self):
        if self._consumer is None:
            self._consumer = kafka_clients.consumer(
                self.s, self.s.group("worker.reader"), **{"enable.partition.eof": True}
            )
        return self._consumer

    def _first_offset(self, topic: str, partition: int) -> int:
        low, _ = self._client().get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        return low

    def _read(self, ranges: dict[tuple[str, int], tuple[int, int | None]], limit: int | None = None) -> list[Record]:
        """Records of each partition from its start offset to its end offset (None: to the
        end of the log, its end-of-partition event: the local broker's high watermark can
        be short); fewer where the log has no record, or once there are ``limit``."""
        client = self._client()
        client.assign([TopicPartition(t, p, start) for (t, p), (start, _) in ranges.items()])
        out: list[Record]
        out, pending = [], set(ranges)
        deadline = time.monotonic() + 30
        try:
            while pending and (limit is None or len(out) < limit):
                msg = client.poll(0.5)
                if msg is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cannot read {sorted(pending)} from {ranges}")
                    continue
                tp = (msg.topic(), msg.partition())
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(msg.error())
                    pending.discard(tp)  # the log has no more records
                elif tp in pending:
                    end = ranges[tp][1]
                    if end is not None and msg.offset() >= end:
                        pending.discard(tp)
                    else:
                        out.append(_record(msg))
        finally:
            client.unassign()
        return out


def _record(msg) -> Record:
    ts = msg.timestamp()[1]
    return Record(
        msg.topic(),
        msg.partition(),
        msg.offset(),
        msg.key(),
        msg.value(),
        ts / 1000 if ts >= 0 else None,
        msg.headers(),
    )


async def save_state(table, entries) -> None:
    """Write ``(partition, key, value)`` entries to a table and its changelog (value
    None deletes the key: a real tombstone, which recovery and compaction delete), and
    wait until the broker has them all.  A value too large for the broker fails here,
    naming the key and its size, before anything of the batch is acknowledged.

    The last record of each partition goes in a produce request of its own: a broker
    whose high watermark counts only the first record of a partition's last batch (the
    local one does) then still reports the exact end, which table recovery reads up to.
    A crash in between leaves a changelog whose readable prefix is an older, consistent
    state (each entry carries the input position it reflects).
    """
    records = []
    for partition, key, value in entries:  # every size checked before anything is sent
        raw = None if value is None else json.dumps(value).encode()  # None: JSON would write 'null'
        if raw is not None and len(raw) > MAX_STATE_RECORD:
            raise StateTooLarge(
                f"table {table.name}: the state of key {key!r} is {len(raw):,} bytes, "
                f"more than the {MAX_STATE_RECORD:,} a changelog record may hold"
            )
        records.append((partition, key, raw, None, "raw"))
    data = table.data
    last: dict[int, tuple] = {}
    earlier = []
    for (partition, key, value), record in zip(entries, records):
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        if partition in last:
            earlier.append(table.send_changelog(*last[partition]))
        last[partition] = record
    await delivered(earlier)
    await delivered([table.send_changelog(*entry) for entry in last.values()])


async def delivered(futures: list) -> None:
    """Wait until the broker has acknowledged every one of ``futures`` (Faust's
    ``FutureMessage``), raising the first failure.  A cancel of the waiter (a stop) leaves
    them be: ``asyncio.gather`` would cancel them, and Faust's producer callback then fails
    on completing one ("invalid state", logged as an ERROR)."""
    if futures:
        await asyncio.wait(futures)
        for future in futures:
            future.result()


class StateTooLarge(RuntimeError):
    """A stage's state record would exceed what the broker accepts (a bound is missing)."""


def check_topics(s: Settings) -> None:
    """Every topic the worker uses must be in the catalog (e.g. one per bar interval)."""
    for interval in s.interval_list:
        try:
            kafka_clients.topic_spec(f"md.bars.{interval}")
        except KeyError as e:
            raise ConfigError(f"BAR_INTERVALS has {interval}: {e.args[0]}") from None


def run_worker(s: Settings) -> int:
    """Run every stage until SIGTERM/SIGINT (exit 0) or a crash (exit 1)."""
    check_topics(s)
    kafka_clients.ensure_topics(s)  # never rely on broker auto-creation
    if s.worker_event_loop.lower() == "uvloop":  # before the app exists: its services take the policy's loop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return execute(build_app(s), s)


def execute(app: faust.App, s: Settings) -> int:
    """Serve /metrics and run the app's worker until it stops; its exit code."""
    metrics.serve("worker", s)
    worker = faust.Worker(app, loglevel=s.log_level, override_logging=False, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    return 0

"""The consumer loop both sinks share: batching, back-pressure, retries, dead letters
and offset commits.

Delivery: a batch's offsets are committed only after its writer has made it durable
(the database transaction committed, the Redis pipeline answered) and its poison
messages are in the dead-letter topic.  A crash anywhere before that replays the batch,
and the writers are idempotent on each event's key, so the store ends with exactly the
topic's events.

Failures: a writer raises ``Outage`` when its store (or the broker, for dead letters) is
unreachable or busy; the batch is retried with backoff until it goes through.  Any other
exception is a bug or a schema the code does not match, which a retry cannot fix: the
loop logs one line and returns ``EXIT_BUG`` without committing the batch.

Poison: a message that is undecodable, of the wrong event type, invalid
(``ticktape.validate``) or refused by the store goes to ``dlq.<sink>`` once
(``ticktape.deadletter``), and the rest of the batch is written.  A null value is a
tombstone, skipped, only on a compacted topic; elsewhere it is poison (as in the stages).

Back-pressure: the loop stops consuming while a batch is written or retried, so memory
holds at most one batch plus the consumer's bounded prefetch queue.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from ticktape import deadletter, kafka_clients, metrics
from ticktape.config import Settings
from ticktape.core.tickbatch import expand
from ticktape.serde import Serde, SerdeError
from ticktape.validate import Validator

from .tables import expected_event

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0
PREFETCH_KBYTES = 16384  # per-consumer bound on fetched-but-unprocessed data
EXIT_BUG = 3  # run()'s code when an error that no retry fixes stopped it


class Outage(Exception):
    """The store or the broker cannot take the batch now; retrying it later can succeed."""


@dataclass
class Item:
    msg: Message
    event: str  # event type, e.g. "tick"
    record: dict


@dataclass
class Poison:
    msg: Message
    error: str


class Writer(Protocol):
    name: str  # "postgres", "redis": the sink's name (metrics, group, dlq.<name>)

    def write(self, items: list[Item]) -> list[Poison]:
        """Make the items durable (idempotently); return those that can never be written.
        Raise ``Outage`` for a transient failure: the runner retries the whole batch."""

    def close(self) -> None: ...


class SinkRunner:
    def __init__(
        self,
        s: Settings,
        writer: Writer,
        topics: list[str],
        *,
        group: str | None = None,
        batch_size: int | None = None,
        max_latency_ms: int | None = None,
    ):
        self.s = s
        self.writer = writer
        self.stage = f"sink-{writer.name}"
        self.group = group or s.group(self.stage)
        self.batch_size = batch_size or s.sink_batch_size
        self.max_latency = (max_latency_ms or s.sink_max_latency_ms) / 1000
        self.dlq_topic = s.topic(f"dlq.{writer.name}")
        # full topic name -> (catalog name, event type)
        self.topics = {s.topic(t): (t, expected_event(t)) for t in topics}
        self.compacted = {s.topic(t) for t in topics if "compact" in kafka_clients.topic_spec(t, s).cleanup_policy}
        self.serde = Serde(s.schema_registry_url)
        self.validator = Validator(s)
        self.stopping = threading.Event()
        self.healthy = True
        self.assigned: set[tuple[str, int]] = set()
        self.committed: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self._buf: list[Message] = []
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    def stop(self) -> None:
        """Ask the loop to flush, commit and return (safe from a signal handler or thread)."""
        self.stopping.set()

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> int:
        """Consume until stop(); 0 after a clean flush, 1 when stopped with a batch unwritten,
        ``EXIT_BUG`` when an error that no retry fixes stopped it."""
        consumer = kafka_clients.consumer(self.s, self.group, **{"queued.max.messages.kbytes": PREFETCH_KBYTES})
        self._consumer = consumer
        consumer.subscribe(
            list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        metrics.SINK_HEALTHY.labels(self.writer.name).set(1)
        first_at = 0.0
        try:
            while not self.stopping.is_set():
                timeout = max(0.0, first_at + self.max_latency - time.monotonic()) if self._buf else 0.2
                for m in consumer.consume(self.batch_size - len(self._buf), timeout):
                    if m.error():
                        log.warning("%s: consumer error: %s", self.stage, m.error())
                        continue
                    if not self._buf:
                        first_at = time.monotonic()
                    self._buf.append(m)
                if self._buf and (len(self._buf) >= self.batch_size or time.monotonic() - first_at >= self.max_latency):
                    rc = self._flush()
                    if rc:
                        return rc
            return self._flush() if self._buf else 0
        finally:
            consumer.close()
            self.writer.close()
            if self._producer is not None:
                self._producer.flush(10)

    def _on_assign(self, consumer, partitions):
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        log.info("%s assigned %s", self.stage, _describe(partitions))

    def _on_revoke(self, consumer, partitions):
        gone = {(p.topic, p.partition) for p in partitions}
        self.assigned -= gone
        # Unwritten messages of lost partitions are dropped, not written: their offsets
        # are not committed, so the partitions' next owner reads them again.
        self._buf = [m for m in self._buf if (m.topic(), m.partition()) not in gone]
        log.info("%s revoked %s", self.stage, _describe(partitions))

    # -- one batch ---------------------------------------------------------------------
    def _flush(self) -> int:
        """Write, dead-letter and commit the buffered batch: 0 when done, 1 when stopped
        while retrying, ``EXIT_BUG`` on an error no retry fixes (nothing committed)."""
        batch, self._buf = self._buf, []
        started = time.monotonic()
        items, undecodable = self._decode(batch)
        acked: set[tuple[str, int, int]] = set()  # dead letters the broker has: never sent twice
        backoff = 0.5
        while True:
            try:
                poison = undecodable + self.writer.write(items)
                self._dead_letter(poison, acked)
                break
            except Outage as e:
                metrics.SINK_ERRORS.labels(self.writer.name).inc()
                metrics.SINK_HEALTHY.labels(self.writer.name).set(0)
                self.healthy = False
                log.warning("%s: write failed (%s); retrying in %.1f s", self.stage, _first_line(e), backoff)
                if self.stopping.wait(backoff):
                    log.warning(
                        "%s: stopped with %d messages unwritten (they will be redelivered)", self.stage, len(batch)
                    )
                    return 1
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception as e:  # noqa: BLE001 - not an outage: a retry would fail the same way
                metrics.SINK_ERRORS.labels(self.writer.name).inc()
                metrics.SINK_HEALTHY.labels(self.writer.name).set(0)
                self.healthy = False
                where = traceback.extract_tb(e.__traceback__)[-1]
                log.error(
                    "%s: stopped by an error a retry cannot fix: %s: %s (%s:%d); %d messages not "
                    "committed, they are redelivered on restart",
                    self.stage,
                    type(e).__name__,
                    _first_line(e),
                    where.filename,
                    where.lineno,
                    len(batch),
                )
                log.debug("%s: traceback", self.stage, exc_info=e)
                return EXIT_BUG
        if not self.healthy:
            log.info("%s: writes succeed again", self.stage)
        self.healthy = True
        metrics.SINK_HEALTHY.labels(self.writer.name).set(1)
        self._commit(batch)
        metrics.SINK_BATCH_LATENCY.labels(self.writer.name).observe(time.monotonic() - started)
        return 0

    def _decode(self, batch: list[Message]) -> tuple[list[Item], list[Poison]]:
        items, poison = [], []
        counts: Counter[str] = Counter()
        now_us = time.time_ns() // 1000
        latency = metrics.EVENT_LATENCY.labels(self.stage)
        # confluent_kafka types a Message's topic/partition/offset Optional: a consumed
        # message without error (run() keeps no other) has them all
        for m in batch:
            name, event = self.topics[m.topic()]  # type: ignore[index]
            counts[name] += 1
            if m.value() is None and m.topic() in self.compacted:
                continue  # a tombstone: nothing to store
            try:
                # a null value here (not a tombstone) is poison: decode raises SerdeError on it
                got, record = self.serde.decode(m.value())  # type: ignore[arg-type]
                if got == "heartbeat" and event == "tick":
                    continue  # a source's watermark on md.ticks: nothing to store
                if got == "tick_batch" and event == "tick":
                    records = expand(record)  # a TickBatch stores as its ticks
                elif got != event:
                    raise SerdeError(f"a {got} event on a topic of {event} events")
                else:
                    records = [record]
            except (SerdeError, ValueError) as e:
                poison.append(Poison(m, str(e)))
                continue
            for r in records:  # a batch's valid ticks are stored, its invalid ones dead-lettered
                try:
                    self.validator.check(event, r)
                except SerdeError as e:
                    poison.append(Poison(m, str(e)))
                    continue
                items.append(Item(m, event, r))
            latency.observe(max(0, now_us - record["ts"]) / 1e6)
        for name, n in counts.items():
            metrics.EVENTS_IN.labels(self.stage, name).inc(n)
        return items, poison

    def _dead_letter(self, poison: list[Poison], acked: set[tuple[str, int, int]]) -> None:
        """Send each poison message not in ``acked`` to the dead-letter topic and wait for
        the broker; ``acked`` gains those it took (Outage when it took not all)."""
        # rows of one TickBatch share its message: dead-letter it once, with every error
        by_msg: dict[tuple, Poison] = {}
        for p in poison:
            key = (p.msg.topic(), p.msg.partition(), p.msg.offset())
            if key not in acked:
                by_msg[key] = Poison(p.msg, f"{by_msg[key].error}; {p.error}") if key in by_msg else p
        if not by_msg:
            return
        if self._producer is None:
            self._producer = kafka_clients.producer(self.s)

        def report(err, msg, key):
            if err is None:
                acked.add(key)
                metrics.DLQ_MESSAGES.labels(self.stage, self.topics[key[0]][0]).inc()

        for key, p in by_msg.items():
            m = p.msg
            dl = deadletter.dead_letter(
                p.error,
                stage=self.stage,
                topic=m.topic(),  # type: ignore[arg-type]
                partition=m.partition(),  # type: ignore[arg-type]
                offset=m.offset(),  # type: ignore[arg-type]
                key=m.key(),
                value=m.value(),
                max_bytes=self.s.dlq_max_bytes,
            )
            # confluent_kafka: headers is an invariant list of (str, str | bytes | None), and
            # mypy cannot type a lambda with a default argument as its DeliveryCallback
            self._producer.produce(
                self.dlq_topic,
                key=dl.key,
                value=dl.value,
                headers=dl.headers,  # type: ignore[arg-type]
                on_delivery=lambda err, msg, key=key: report(err, msg, key),  # type: ignore[misc]
            )
            log.warning(
                "%s: %s[%d]@%d -> %s: %s",
                self.stage,
                m.topic(),
                m.partition(),
                m.offset(),
                self.dlq_topic,
                p.error[:300],
            )
        self._producer.flush(30)
        if not by_msg.keys() <= acked:
            raise Outage(f"{len(by_msg.keys() - acked)} dead letters not acknowledged by {self.dlq_topic}")

    def _commit(self, batch: list[Message]) -> None:
        nxt: dict[tuple[str, int], int] = {}
        for m in batch:
            key: tuple[str, int] = (m.topic(), m.partition())  # type: ignore[assignment]  # see _decode
            nxt[key] = max(nxt.get(key, 0), m.offset() + 1)  # type: ignore[operator]
        owned = [TopicPartition(t, p, o) for (t, p), o in nxt.items() if (t, p) in self.assigned]
        if not owned:
            return
        assert self._consumer is not None  # set by run(), the only caller of _flush
        try:
            self._consumer.commit(offsets=owned, asynchronous=False)
        except KafkaException as e:
            # Written but not committed: the batch is redelivered and deduplicated.
            log.warning("%s: offset commit failed (%s)", self.stage, e)
            return
        for tp in owned:
            self.committed[(tp.topic, tp.partition)] = tp.offset
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                # labelled without the run prefix: label values stay bounded across runs
                metrics.CONSUMER_LAG.labels(f"ticktape.{self.stage}", self.topics[tp.topic][0], str(tp.partition)).set(
                    max(0, high - tp.offset)
                )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _describe(partitions) -> str:
    by_topic: dict[str, list[int]] = {}
    for p in partitions:
        by_topic.setdefault(p.topic, []).append(p.partition)
    return " ".join(f"{t}{sorted(ps)}" for t, ps in sorted(by_topic.items())) or "nothing"

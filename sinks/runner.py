"""The consumer loop both sinks share: batching, back-pressure, retries, dead letters
and offset commits.

Delivery: a batch's offsets are committed only after its writer has made it durable
(the database transaction committed, the Redis pipeline answered) and its poison
messages are in the dead-letter topic.  A crash anywhere before that replays the batch,
and the writers are idempotent on each event's key, so the store ends with exactly the
topic's events.

Back-pressure: the loop stops consuming while a batch is written or retried, so memory
holds at most one batch plus the consumer's bounded prefetch queue.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import KafkaException, Message, TopicPartition

from ticktape import kafka_clients, metrics
from ticktape.config import Settings
from ticktape.core.tickbatch import expand
from ticktape.serde import Serde, SerdeError

from .tables import expected_event

log = logging.getLogger(__name__)

# Headers of a dead-lettered message (its key and value are the original bytes).
H_ERROR = "ticktape.error"
H_SINK = "ticktape.sink"
H_TOPIC = "ticktape.source.topic"
H_PARTITION = "ticktape.source.partition"
H_OFFSET = "ticktape.source.offset"

MAX_BACKOFF_S = 5.0
PREFETCH_KBYTES = 16384  # per-consumer bound on fetched-but-unprocessed data


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
        Raise for a transient failure: the runner retries the whole batch."""

    def close(self) -> None: ...


class SinkRunner:
    def __init__(self, s: Settings, writer: Writer, topics: list[str], *, group: str | None = None,
                 batch_size: int | None = None, max_latency_ms: int | None = None):
        self.s = s
        self.writer = writer
        self.stage = f"sink-{writer.name}"
        self.group = group or s.group(self.stage)
        self.batch_size = batch_size or s.sink_batch_size
        self.max_latency = (max_latency_ms or s.sink_max_latency_ms) / 1000
        self.dlq_topic = s.topic(f"dlq.{writer.name}")
        # full topic name -> (catalog name, event type)
        self.topics = {s.topic(t): (t, expected_event(t)) for t in topics}
        self.serde = Serde(s.schema_registry_url)
        self.stopping = threading.Event()
        self.healthy = True
        self.assigned: set[tuple[str, int]] = set()
        self.committed: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self._buf: list[Message] = []
        self._consumer = None
        self._producer = None

    def stop(self) -> None:
        """Ask the loop to flush, commit and return (safe from a signal handler or thread)."""
        self.stopping.set()

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> int:
        """Consume until stop(); 0 after a clean flush, 1 when stopped with a batch unwritten."""
        consumer = kafka_clients.consumer(self.s, self.group, **{"queued.max.messages.kbytes": PREFETCH_KBYTES})
        self._consumer = consumer
        consumer.subscribe(list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
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
                if self._buf and (len(self._buf) >= self.batch_size
                                  or time.monotonic() - first_at >= self.max_latency):
                    if not self._flush():
                        return 1
            return 0 if not self._buf or self._flush() else 1
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
    def _flush(self) -> bool:
        batch, self._buf = self._buf, []
        started = time.monotonic()
        items, undecodable = self._decode(batch)
        backoff = 0.5
        while True:
            try:
                poison = undecodable + self.writer.write(items)
                self._dead_letter(poison)
                break
            except Exception as e:  # noqa: BLE001 - any failure: report unhealthy, retry
                metrics.SINK_ERRORS.labels(self.writer.name).inc()
                metrics.SINK_HEALTHY.labels(self.writer.name).set(0)
                self.healthy = False
                log.warning("%s: write failed (%s: %s); retrying in %.1f s", self.stage,
                            type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "",
                            backoff)
                if self.stopping.wait(backoff):
                    log.warning("%s: stopped with %d messages unwritten (they will be redelivered)",
                                self.stage, len(batch))
                    return False
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        if not self.healthy:
            log.info("%s: writes succeed again", self.stage)
        self.healthy = True
        metrics.SINK_HEALTHY.labels(self.writer.name).set(1)
        self._commit(batch)
        metrics.SINK_BATCH_LATENCY.labels(self.writer.name).observe(time.monotonic() - started)
        return True

    def _decode(self, batch: list[Message]) -> tuple[list[Item], list[Poison]]:
        items, poison = [], []
        counts = Counter()
        now_us = time.time_ns() // 1000
        latency = metrics.EVENT_LATENCY.labels(self.stage)
        for m in batch:
            name, event = self.topics[m.topic()]
            counts[name] += 1
            if m.value() is None:
                continue  # a tombstone of a compacted topic: nothing to store
            try:
                got, record = self.serde.decode(m.value())
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
            items.extend(Item(m, event, r) for r in records)
            latency.observe(max(0, now_us - record["ts"]) / 1e6)
        for name, n in counts.items():
            metrics.EVENTS_IN.labels(self.stage, name).inc(n)
        return items, poison

    def _dead_letter(self, poison: list[Poison]) -> None:
        if not poison:
            return
        # rows of one TickBatch share its message: dead-letter it once, with every error
        by_msg: dict[tuple, Poison] = {}
        for p in poison:
            key = (p.msg.topic(), p.msg.partition(), p.msg.offset())
            by_msg[key] = Poison(p.msg, f"{by_msg[key].error}; {p.error}") if key in by_msg else p
        poison = list(by_msg.values())
        if self._producer is None:
            self._producer = kafka_clients.producer(self.s)
        for p in poison:
            m = p.msg
            headers = [(H_ERROR, p.error[:2000].encode()), (H_SINK, self.writer.name.encode()),
                       (H_TOPIC, m.topic().encode()), (H_PARTITION, str(m.partition()).encode()),
                       (H_OFFSET, str(m.offset()).encode())]
            self._producer.produce(self.dlq_topic, key=m.key(), value=m.value(), headers=headers)
            log.warning("%s: %s[%d]@%d -> %s: %s", self.stage, m.topic(), m.partition(), m.offset(),
                        self.dlq_topic, p.error)
        if self._producer.flush(30) > 0:
            raise KafkaException(f"dead-letter messages not acknowledged by {self.dlq_topic}")
        for p in poison:
            metrics.DLQ_MESSAGES.labels(self.stage, self.topics[p.msg.topic()][0]).inc()

    def _commit(self, batch: list[Message]) -> None:
        nxt: dict[tuple[str, int], int] = {}
        for m in batch:
            key = (m.topic(), m.partition())
            nxt[key] = max(nxt.get(key, 0), m.offset() + 1)
        owned = [TopicPartition(t, p, o) for (t, p), o in nxt.items() if (t, p) in self.assigned]
        if not owned:
            return
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
                metrics.CONSUMER_LAG.labels(f"ticktape.{self.stage}", self.topics[tp.topic][0],
                                            str(tp.partition)).set(
                    max(0, high - tp.offset))


def _describe(partitions) -> str:
    by_topic: dict[str, list[int]] = {}
    for p in partitions:
        by_topic.setdefault(p.topic, []).append(p.partition)
    return " ".join(f"{t}{sorted(ps)}" for t, ps in sorted(by_topic.items())) or "nothing"

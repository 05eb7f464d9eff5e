"""The producer core every source shares: Avro encoding, an idempotent Kafka producer
with delivery reports, back-pressure, metrics, tick batching and a graceful stop that
flushes everything.  Sources (sim, websocket, yahoo, replay) only turn their input into
events and call ``publish``.

With ``TICK_BATCH_MAX`` > 1, ticks are grouped per symbol into TickBatch messages
(``ticktape.core.tickbatch``) of up to that many ticks, none waiting longer than
``TICK_BATCH_MS``: a background thread sends groups that waited that long.

A live source also calls ``start_heartbeats``: every md.ticks partition that got no
message for ``HEARTBEAT_MS`` then gets a Heartbeat whose ts is the source's clock (its
newest tick's event time plus the wall time since), so a quiet partition's windows, and
the session's last bars, close within HEARTBEAT_MS + BAR_GRACE_MS; the heartbeat is on
the log, so a replay closes them the same way.

A source that follows the market calendar calls ``follow_sessions``: once its clock (a
tick's event time, or the live clock above) reaches a session's close, every md.ticks
partition gets a *close heartbeat* at close + BAR_GRACE_MS — the promise that nothing
older follows until the next open — so the bars stage closes the day's last bars at the
close, live or replayed.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time

from confluent_kafka import KafkaError, KafkaException
from prometheus_client import Counter

from ticktape import kafka_clients, metrics
from ticktape.config import Settings
from ticktape.core.calendar import MarketHours
from ticktape.core.tickbatch import TickBatcher, make_batch
from ticktape.serde import Serde

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """Events the broker did not acknowledge before the producer was closed."""


class StopFlag:
    """Set by SIGTERM/SIGINT (or by code); sources poll it between events."""

    def __init__(self, install_signals: bool = True):
        self._event = threading.Event()
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.set())

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


class EventPublisher:
    """Publish events to catalog topics (with the run's prefix), keyed by symbol."""

    def __init__(self, s: Settings, stage: str = "producer", **producer_overrides):
        self.settings = s
        self.stage = stage
        self.serde = Serde(s.schema_registry_url)
        self.producer = kafka_clients.producer(s, **producer_overrides)
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.last_error: KafkaError | None = None
        self._topics: dict[str, str] = {}
        self._out: dict[str, Counter] = {}
        self._batcher = TickBatcher(s.tick_batch_max, s.tick_batch_ms) if s.tick_batch_max > 1 else None
        self._lock = threading.Lock()  # the batcher is shared with the linger thread
        self._linger: threading.Thread | None = None
        self._closed = threading.Event()
        self.heartbeats = 0
        self._hb_topic: str | None = None  # set by start_heartbeats
        self._last_message: dict[int, float] = {}  # md.ticks partition -> monotonic time of its last delivery
        self._clock: tuple[int, float] | None = None  # (newest tick ts, monotonic time then)
        self._hours: MarketHours | None = None  # MarketHours after follow_sessions
        self._close_at: int | None = None  # the next session close to announce
        self._sessions_topic: str | None = None
        self._session_source = ""
        self._session_lock = threading.Lock()  # the publishing and the heartbeat threads both call clock_reached
        self._partitions: list[int] | None = None
        self.closes_announced: list[int] = []

    def _on_delivery(self, err, msg, events: int = 1) -> None:
        """Delivery report of a message holding ``events`` events (a TickBatch: its ticks)."""
        if err is not None:
            self.failed += events
            self.last_error = err
            log.error("delivery to %s failed: %s", msg.topic(), err)
        else:
            self.delivered += events
            if msg.topic() == self._hb_topic:
                self._last_message[msg.partition()] = time.monotonic()

    def publish(
        self,
        topic: str,
        event_type: str,
        record: dict,
        key: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Encode and send one event to catalog topic ``topic`` (blocks while the local
        queue is full: back-pressure instead of unbounded memory).  With tick batching,
        a tick (keyed by its symbol) joins its symbol's batch instead."""
        full = self._topics.get(topic)
        if full is None:
            full = self._topics[topic] = self.settings.topic(topic)
            self._out[topic] = metrics.EVENTS_OUT.labels(self.stage, topic)
        if event_type == "tick" and full == self._hb_topic and (self._clock is None or record["ts"] > self._clock[0]):
            self._clock = (record["ts"], time.monotonic())
        if self._hours is not None and event_type == "tick" and full == self._sessions_topic:
            self.clock_reached(record["ts"])
        if self._batcher is not None and event_type == "tick" and key is None and headers is None:
            with self._lock:
                ready = self._batcher.add(topic, record, time.monotonic())
                self._send_groups(ready)
            if self._linger is None:
                self._linger = threading.Thread(target=self._linger_loop, name="tick-batches", daemon=True)
                self._linger.start()
        else:
            value = self.serde.encode(event_type, record, topic=full)
            self.send_raw(full, value, key if key is not None else record.get("symbol"), headers)
        self._out[topic].inc()

    def _send_groups(self, groups) -> None:
        """Send (topic, ticks) groups of the batcher: a TickBatch, or a Tick when alone."""
        for topic, ticks in groups:
            full = self._topics[topic]
            if len(ticks) == 1:
                self.send_raw(full, self.serde.encode("tick", ticks[0], topic=full), ticks[0]["symbol"])
            else:
                self.send_raw(
                    full,
                    self.serde.encode("tick_batch", make_batch(ticks), topic=full),
                    ticks[0]["symbol"],
                    events=len(ticks),
                )

    def _linger_loop(self) -> None:
        assert self._batcher is not None  # publish starts this thread only with a batcher
        while not self._closed.wait(self._batcher.linger_s / 2):
            with self._lock:
                self._send_groups(self._batcher.due(time.monotonic()))

    def send_raw(
        self,
        full_topic: str,
        value: bytes,
        key: str | bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        *,
        partition: int = -1,
        timestamp_ms: int = 0,
        events: int = 1,
    ) -> None:
        """Send encoded bytes; ``partition`` -1 = the default partitioner, ``timestamp_ms``
        0 = now (replays pass the partition and record time they reproduce)."""
        report = self._on_delivery if events == 1 else functools.partial(self._on_delivery, events=events)
        while True:
            try:
                # confluent_kafka's headers type is an invariant list of (str, str | bytes | None)
                self.producer.produce(
                    full_topic,
                    value=value,
                    key=key,
                    headers=headers,  # type: ignore[arg-type]
                    partition=partition,
                    timestamp=timestamp_ms,
                    on_delivery=report,
                )
                break
            except BufferError:
                self.producer.poll(0.05)  # queue full: wait for deliveries
        self.sent += events
        if self.sent % 1000 < events:
            self.producer.poll(0)

    def start_heartbeats(self, source: str, topic: str = "md.ticks") -> None:
        """Send Heartbeats to ``topic``'s quiet partitions from now on (HEARTBEAT_MS; 0: never)."""
        if self.settings.heartbeat_ms:
            self._hb_topic = self.settings.topic(topic)
            threading.Thread(
                target=self._heartbeat_loop, args=(source, self._hb_topic), name="heartbeats", daemon=True
            ).start()

    def _heartbeat_loop(self, source: str, topic: str) -> None:
        every = self.settings.heartbeat_ms / 1000
        partitions = None
        while partitions is None:  # the broker may not answer yet
            try:
                meta = self.producer.list_topics(topic, timeout=every).topics[topic]
                partitions = None if meta.error is not None else list(meta.partitions)
            except KafkaException as e:
                log.debug("heartbeats: no metadata of %s yet: %s", topic, e)
            if partitions is None and self._closed.wait(every):
                return
        now = time.monotonic()
        for p in partitions:
            self._last_message.setdefault(p, now)
        while not self._closed.wait(every / 4):
            self.producer.poll(0)  # delivery reports: when each partition last got a message
            now = time.monotonic()
            if self._clock is None:
                continue  # no tick yet: the source's clock is unknown
            ts = self._clock[0] + int((now - self._clock[1]) * 1e6)
            self.clock_reached(ts)
            for p, last in sorted(self._last_message.items()):
                if now - last >= every:
                    hb = {"event_id": f"hb:{source}:{p}:{ts}", "ts": ts, "source": source, "partition": p}
                    try:
                        self.producer.produce(
                            topic,
                            value=self.serde.encode("heartbeat", hb, topic=topic),
                            partition=p,
                            on_delivery=self._on_heartbeat,
                        )
                    except BufferError:
                        break  # the queue is full of data: the partitions are not quiet; next round
                    self._last_message[p] = now

    def follow_sessions(self, hours, source: str, topic: str = "md.ticks") -> None:
        """Announce each session close of ``hours`` (a MarketHours) with close heartbeats."""
        self._hours, self._session_source = hours, source
        self._sessions_topic = self.settings.topic(topic)

    def clock_reached(self, ts: int) -> None:
        """The source's clock is at ``ts``: announce the session close it passed, if any
        (ticks published so far go first: the open tick batches are sent before)."""
        if self._hours is None:
            return
        with self._session_lock:
            if self._close_at is not None and ts >= self._close_at:
                with self._lock:
                    if self._batcher is not None:
                        self._send_groups(self._batcher.drain())
                    self._announce_close(self._close_at)
                self._close_at = None
            if self._close_at is None and self._hours.is_open(ts):
                self._close_at = self._hours.next_close(ts)

    def _announce_close(self, close: int) -> None:
        topic = self._sessions_topic
        assert topic is not None  # set by follow_sessions, which clock_reached (the caller) needs
        if self._partitions is None:
            self._partitions = sorted(self.producer.list_topics(topic, timeout=30).topics[topic].partitions)
        ts = close + self.settings.bar_grace_ms * 1000
        for p in self._partitions:
            hb = {
                "event_id": f"hb:{self._session_source}:{p}:{ts}",
                "ts": ts,
                "source": self._session_source,
                "partition": p,
            }
            value = self.serde.encode("heartbeat", hb, topic=topic)
            while True:
                try:
                    self.producer.produce(topic, value=value, partition=p, on_delivery=self._on_heartbeat)
                    break
                except BufferError:
                    self.producer.poll(0.05)  # queue full: wait for deliveries
        self.closes_announced.append(close)
        log.info("session close at %d µs announced to %d partitions of %s", close, len(self._partitions), topic)

    def _on_heartbeat(self, err, msg) -> None:
        if err is None:
            self.heartbeats += 1
            metrics.HEARTBEATS.labels(self.stage).inc()
        else:
            log.warning("heartbeat to %s[%d] failed: %s", msg.topic(), msg.partition(), err)

    def flush(self, timeout: float = 30.0) -> None:
        """Send the open tick batches, then wait until every event sent so far is
        acknowledged; raise if any failed."""
        with self._lock:
            if self._batcher is not None:
                self._send_groups(self._batcher.drain())
            remaining = self.producer.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} events not delivered within {timeout:.0f} s")
        if self.failed:
            raise DeliveryError(f"{self.failed} events failed delivery (last: {self.last_error})")

    def close(self) -> None:
        self._closed.set()
        self.flush()


def paced(events, speed: float | None, stop: StopFlag, clock=time.monotonic):
    """Yield events no faster than their event time allows at ``speed`` × real time
    (``None`` = as fast as possible); stops early when ``stop`` is set."""
    first_ts = None
    t0 = None
    for ev in events:
        if stop:
            return
        if speed:
            if first_ts is None:
                first_ts, t0 = ev["ts"], clock()
            due = t0 + (ev["ts"] - first_ts) / 1e6 / speed
            delay = due - clock()
            if delay > 0 and stop.wait(delay):
                return
        yield ev


class SourceStats:
    """Counters of one source (``websocket:alpaca``, ``yahoo``…) kept as plain ints for
    the source's summary and mirrored to the ``ticktape_source_*`` metrics."""

    def __init__(self, source: str):
        self.source = source
        self.received: dict[str, int] = {}
        self.published = self.reconnects = self.gaps = self.duplicates = self.drops = self.errors = 0
        self._metrics = {
            name: metric.labels(source)
            for name, metric in (
                ("published", metrics.SOURCE_EVENTS),
                ("reconnects", metrics.SOURCE_RECONNECTS),
                ("gaps", metrics.SOURCE_GAPS),
                ("duplicates", metrics.SOURCE_DUPLICATES),
                ("drops", metrics.SOURCE_DROPS),
                ("errors", metrics.SOURCE_ERRORS),
            )
        }
        self._latency = metrics.SOURCE_LATENCY.labels(source)
        self._kinds: dict[str, Counter] = {}

    def receive(self, kind: str, n: int = 1) -> None:
        self.received[kind] = self.received.get(kind, 0) + n
        child = self._kinds.get(kind)
        if child is None:
            child = self._kinds[kind] = metrics.SOURCE_MESSAGES.labels(self.source, kind)
        child.inc(n)

    def add(self, name: str, n: int = 1) -> None:
        """Count ``n`` more published/reconnects/gaps/duplicates/drops/errors."""
        setattr(self, name, getattr(self, name) + n)
        self._metrics[name].inc(n)

    def latency(self, event_ts_us: int) -> None:
        self._latency.observe(max(0.0, time.time() - event_ts_us / 1e6))

    def summary(self) -> str:
        received = ", ".join(f"{k} {v}" for k, v in sorted(self.received.items())) or "nothing"
        return (
            f"received {received}; published {self.published}, duplicates {self.duplicates}, "
            f"gaps {self.gaps}, reconnects {self.reconnects}, drops {self.drops}, errors {self.errors}"
        )

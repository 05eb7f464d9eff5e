"""`ticktape produce websocket`: a live provider feed (Alpaca market-data stream v2,
Polygon.io stocks) publishing trades and quotes to md.ticks and minute bars to md.bars.1m.

A provider is one module of ``ticktape.core`` (its ``PROVIDER``: URL, auth, subscribe,
parse); everything below is the same for all of them.

Two threads: the socket reader (asyncio) parses and normalizes every message, drops
duplicates and numbers ticks (``ticktape.core.feed``), and hands events over through a
bounded queue to the publisher thread, which owns the idempotent Kafka producer.  When
Kafka is slower than the feed the queue fills; then the reader either waits (``block``:
it stops reading the socket, the provider sees a slow client) or drops the newest
events and counts them (``drop``).  Memory stays bounded either way.

Connections are retried with exponential backoff and full jitter, and resubscribed;
a WebSocket ping unanswered within WEBSOCKET_TIMEOUT_S counts as a dead connection.
Errors that retrying cannot fix (a bad key, a plan that lacks the feed, too many
symbols) end the feed with one clear message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import queue
import threading
import time
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ticktape import metrics
from ticktape.config import ConfigError, Settings
from ticktape.deadletter import DeadLetter, dead_letter
from ticktape.core import alpaca, polygon
from ticktape.core.feed import FeedTracker, ProtocolError, Provider, ProviderError, backoff_delays
from ticktape.market_calendar import market_hours

from .base import EventPublisher, SourceStats, StopFlag

log = logging.getLogger(__name__)
PROVIDERS: dict[str, Provider] = {p.name: p for p in (alpaca.PROVIDER, polygon.PROVIDER)}
DLQ_TOPIC = "dlq.sources"  # what a provider sent that cannot be read
DROP_REPORT_S = 5.0  # at most one drop warning per this many seconds
COUNT_BATCH = 1000  # the publisher updates its counters at least every this many events


def add_arguments(p, parse_time, parse_speed) -> None:
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="alpaca", help="market-data provider")
    p.add_argument("--symbols", help="comma/space separated symbols (SYMBOLS)")
    p.add_argument("--channels", help="comma separated: trades, quotes, bars (default all)")
    p.add_argument("--feed", help="provider feed: iex, sip… (ALPACA_FEED); realtime or delayed (POLYGON_FEED)")
    p.add_argument("--url", help="stream URL instead of the provider's (WEBSOCKET_URL)")
    p.add_argument("--on-full", choices=("block", "drop"), help="when Kafka is slower (WEBSOCKET_ON_FULL)")
    p.add_argument("--queue-size", type=int, help="events buffered for Kafka (WEBSOCKET_QUEUE_SIZE)")
    p.add_argument("--count", type=int, help="stop after N new events")


def run(args, s: Settings, stop: StopFlag | None = None) -> int:
    provider = PROVIDERS[args.provider]
    overrides = {
        name: value
        for name, value in (
            (provider.feed_setting, args.feed),
            ("websocket_url", args.url),
            ("websocket_on_full", args.on_full),
            ("websocket_queue_size", args.queue_size),
        )
        if value is not None
    }
    s = dataclasses.replace(s, **overrides)
    symbols = args.symbols.replace(",", " ").split() if args.symbols else s.symbol_list
    channels = (
        provider.channels if args.channels is None else tuple(c.strip() for c in args.channels.split(",") if c.strip())
    )
    bad = sorted(set(channels) - set(provider.channels))
    if bad or not channels:
        raise ConfigError(f"unknown channels {bad or channels}: choose from {', '.join(provider.channels)}")
    feed = WebSocketFeed(s, symbols, channels, stop=stop or StopFlag(), count=args.count, provider=provider)
    metrics.serve("websocket", s)
    feed.run()
    return 0


class _FrameLog(logging.LoggerAdapter):
    """The WebSocket library's log (frames at DEBUG) without the credentials: a frame
    that holds one is logged by its size only, since the library's own text of a frame
    shows part of it."""

    def __init__(self, credentials: tuple[str, ...]):
        super().__init__(logging.getLogger("websockets.client"), {})
        self.credentials = [c.encode() for c in credentials if c]

    def log(self, level, msg, *args, **kwargs) -> None:
        if not self.isEnabledFor(level):
            return
        for arg in args:
            data = getattr(arg, "data", None)
            if isinstance(data, (bytes, bytearray)) and any(c in data for c in self.credentials):
                msg, args = "%s [a frame of %d bytes holding credentials, not shown]", (str(msg)[:1], len(data))
                break
        self.logger.log(level, msg, *args, **kwargs)


class WebSocketFeed:
    def __init__(
        self,
        s: Settings,
        symbols: list[str],
        channels: tuple[str, ...] | None = None,
        *,
        stop: StopFlag,
        count: int | None = None,
        publisher: EventPublisher | None = None,
        provider: Provider = alpaca.PROVIDER,
    ):
        self.credentials = tuple(getattr(s, name) for name in provider.credentials)
        if not all(self.credentials):
            raise ConfigError(
                f"set {' and '.join(n.upper() for n in provider.credentials)} (the {provider.name} account's keys)"
            )
        if s.websocket_on_full not in ("block", "drop"):
            raise ConfigError(f"WEBSOCKET_ON_FULL={s.websocket_on_full!r}: use block or drop")
        if not symbols:
            raise ConfigError("no symbols to subscribe to")
        self.s = s
        self.symbols = list(symbols)
        self.provider = provider
        self.channels = channels or provider.channels
        self.stop = stop
        self.count = count
        try:
            self.url = s.websocket_url or provider.url(getattr(s, provider.feed_setting))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.host = urlsplit(self.url).netloc or self.url
        self.connect_failures = 0  # in a row, since the last session
        self.hours = market_hours(s)  # None: publish at any time
        self.stats = SourceStats(provider.source)
        self.tracker = FeedTracker()
        self.accepted = 0  # new events handed over (queued or dropped)
        self.queue: queue.Queue = queue.Queue(maxsize=s.websocket_queue_size)
        self._drop = s.websocket_on_full == "drop"
        self._publisher = publisher
        self._failure: BaseException | None = None
        self._sessions = 0
        self._last_frame = time.monotonic()
        self._warned_types: set = set()
        self._drops_reported = (0, 0.0)

    # -- the publisher thread ---------------------------------------------------------
    def _drain(self, pub: EventPublisher) -> None:
        pending = 0  # published but not yet counted: counters are updated in batches
        try:
            while (item := self.queue.get()) is not None:
                topic, event_type, event = item
                if event_type is None:  # a dead letter: what the provider sent, as it came
                    pub.send_raw(self.s.topic(topic), event.value, event.key, event.headers)
                    continue
                pub.publish(topic, event_type, event)
                self.stats.latency(event["ts"])
                pending += 1
                if pending >= COUNT_BATCH or self.queue.empty():
                    self.stats.add("published", pending)
                    pending = 0
            # the stop marker already queued behind the last items: count them too
            self.stats.add("published", pending)
        except BaseException as e:  # the reader must not wait forever for a dead publisher
            self._failure = e
            self.stop.set()

    def _put_blocking(self, item) -> None:
        while self._failure is None:
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        """Read the feed until stopped (signal, ``count``) or a fatal provider error,
        then publish and flush everything received."""
        pub = self._publisher or EventPublisher(self.s, stage="websocket")
        pub.start_heartbeats(self.stats.source)
        if self.hours is not None:
            pub.follow_sessions(self.hours, self.stats.source)
        publisher = threading.Thread(target=self._drain, args=(pub,), name="websocket-publisher", daemon=True)
        publisher.start()
        fatal = None
        try:
            asyncio.run(self._connect_loop())
        except ProviderError as e:
            fatal = e
        finally:
            self._put_blocking(None)
            publisher.join()
            try:
                if self._failure is None:
                    pub.close()  # flush: everything received is delivered, or this raises
            finally:
                log.info("websocket %s: %s", self.provider.source, self.stats.summary())
        if self._failure is not None:
            raise self._failure
        if fatal is not None:
            raise ConfigError(f"{self.url}: {fatal}") from None

    # -- the reader -------------------------------------------------------------------
    def _done(self) -> bool:
        return bool(self.stop) or (self.count is not None and self.accepted >= self.count)

    async def _connect_loop(self) -> None:
        delays = backoff_delays(self.s.websocket_backoff_base_s, self.s.websocket_backoff_max_s)
        while not self._done():
            subscribed_before = self._sessions
            try:
                await self._session()
            except ProviderError as e:
                self.stats.add("errors")
                if not e.retry:
                    raise
                reason = str(e)
            except InvalidStatus as e:
                status = e.response.status_code
                if 400 <= status < 500 and status != 429:
                    raise ProviderError(self.provider.name, status, f"HTTP {status} on connect", retry=False) from None
                self.stats.add("errors")
                reason = f"HTTP {status} on connect"
            except InvalidURI as e:
                raise ConfigError(f"bad stream URL: {e}") from None
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError, ProtocolError) as e:
                reason = f"{type(e).__name__}: {e}"
                if self._sessions == subscribed_before and isinstance(e, (OSError, TimeoutError, InvalidHandshake)):
                    # no session came of it: a failed connect (DNS, refused, unreachable, timed out)
                    self.stats.add("errors")
                    self.connect_failures += 1
                    reason = (
                        f"cannot reach {self.host} ({reason}); {self.connect_failures} failed "
                        f"connect{'s' if self.connect_failures > 1 else ''} in a row"
                    )
            if self._done():
                return
            if self._sessions > subscribed_before:  # it worked for a while: start over
                delays = backoff_delays(self.s.websocket_backoff_base_s, self.s.websocket_backoff_max_s)
                self.connect_failures = 0
            delay = next(delays)
            log.warning("websocket %s: %s; reconnecting in %.2f s", self.url, reason, delay)
            if await self._sleep(delay):
                return

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; True when stopped."""
        deadline = time.monotonic() + seconds
        while not self._done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, 0.1))
        return True

    async def _expect(self, ws, what: str) -> dict:
        raw = await asyncio.wait_for(ws.recv(), self.s.websocket_timeout_s)
        try:
            messages = json.loads(raw)
        except ValueError:
            raise ProtocolError(f"expected {what}, got non-JSON {str(raw)[:100]!r}") from None
        return self.provider.expect(messages, what)

    async def _session(self) -> None:
        timeout = self.s.websocket_timeout_s
        async with connect(
            self.url,
            ping_interval=self.s.websocket_ping_interval_s,
            ping_timeout=timeout,
            open_timeout=timeout,
            close_timeout=1,
            max_size=2**24,
            logger=_FrameLog(self.credentials),
        ) as ws:
            await self._expect(ws, "connected")
            await ws.send(self.provider.auth(*self.credentials))
            await self._expect(ws, "authenticated")
            await ws.send(self.provider.subscribe(self.symbols, self.channels))
            self._check_ack(await self._expect(ws, "subscribed"))
            if self._sessions:
                self.stats.add("reconnects")
                self.tracker.reconnected()
                log.info(
                    "websocket %s: reconnected and resubscribed after %.1f s without data",
                    self.url,
                    time.monotonic() - self._last_frame,
                )
            else:
                log.info(
                    "websocket %s: subscribed to %s for %d symbols",
                    self.url,
                    ", ".join(self.channels),
                    len(self.symbols),
                )
            self._sessions += 1
            watcher = asyncio.create_task(self._close_when_done(ws))
            try:
                while True:
                    try:
                        raw = await ws.recv()
                    except ConnectionClosed:
                        if self._done():
                            return
                        raise
                    self._last_frame = time.monotonic()
                    for item in self._handle(raw):
                        try:
                            self.queue.put_nowait(item)
                        except queue.Full:
                            if self._drop:
                                self._count_drop()
                            else:  # back-pressure: wait without blocking the heartbeat
                                await asyncio.to_thread(self._put_blocking, item)
                    if self._done():
                        return
            finally:
                watcher.cancel()

    async def _close_when_done(self, ws) -> None:
        while not self._done():
            await asyncio.sleep(0.1)
        await ws.close()

    def _check_ack(self, ack: dict) -> None:
        for channel in self.channels:
            confirmed = self.provider.confirmed(ack, channel)
            if confirmed is None or "*" in confirmed:
                continue
            missing = [s for s in self.symbols if self.provider.to_provider_symbol(s) not in confirmed]
            if missing:
                log.warning("websocket: %s not confirmed for %s", channel, ", ".join(missing))

    def _count_drop(self) -> None:
        self.stats.add("drops")
        reported, at = self._drops_reported
        now = time.monotonic()
        if now - at >= DROP_REPORT_S:
            log.warning(
                "websocket: Kafka is slower than the feed: %d events dropped so far (%d since last report)",
                self.stats.drops,
                self.stats.drops - reported,
            )
            self._drops_reported = (self.stats.drops, now)

    def _handle(self, raw) -> list[tuple[str, str | None, dict | DeadLetter]]:
        """New events of one frame, as (topic, event type, event), and dead letters of
        what cannot be read, as (DLQ_TOPIC, None, DeadLetter); control errors raise."""
        try:
            messages = json.loads(raw)
        except ValueError as e:
            self.stats.receive("malformed")
            log.warning("websocket: malformed frame dead-lettered to %s: %r", DLQ_TOPIC, str(raw)[:120])
            return [self._dead_letter(f"not JSON: {e}", raw)]
        if not isinstance(messages, list):
            messages = [messages]
        out: list[tuple[str, str | None, dict | DeadLetter]] = []
        kinds: dict[str, int] = {}
        for m in messages:
            if self.count is not None and self.accepted >= self.count:
                break
            parsed = self.provider.parse(m)  # an error message raises
            if parsed.event is None:
                self._other(m, parsed)
                if parsed.kind == "malformed":
                    out.append(self._dead_letter(parsed.detail, json.dumps(m)))
                continue
            name, event, topic, event_type = parsed.kind, parsed.event, parsed.topic, parsed.event_type
            if self.hours is not None and not self.hours.is_open(event.get("window_start", event["ts"])):
                kinds["outside_session"] = kinds.get("outside_session", 0) + 1  # e.g. extended-hours trades
                continue
            kinds[name] = kinds.get(name, 0) + 1
            new, gap = self.tracker.bar(event) if event_type == "bar" else self.tracker.tick(event)
            if not new:
                self.stats.add("duplicates")
                continue
            if gap is not None:
                self.stats.add("gaps")
                log.info("websocket: %s %ss may have a gap between %d and %d (µs)", *gap)
            self.accepted += 1
            out.append((topic, event_type, event))
        for name, n in kinds.items():
            self.stats.receive(name, n)
        return out

    def _other(self, m, parsed) -> None:
        self.stats.receive(parsed.kind)
        if parsed.kind == "unknown":
            if parsed.detail not in self._warned_types and len(self._warned_types) < 100:
                self._warned_types.add(parsed.detail)
                log.warning("websocket: unknown message type %r skipped", parsed.detail)
        elif parsed.kind == "malformed":
            log.warning("websocket: malformed message dead-lettered to %s (%s): %.120s", DLQ_TOPIC, parsed.detail, m)

    def _dead_letter(self, reason: str, raw: str | bytes) -> tuple[str, None, DeadLetter]:
        value = raw.encode() if isinstance(raw, str) else raw
        return (
            DLQ_TOPIC,
            None,
            dead_letter(
                reason,
                stage=self.provider.source,
                topic=self.url,
                partition=-1,
                offset=-1,
                key=None,
                value=value,
                max_bytes=self.s.dlq_max_bytes,
            ),
        )

"""Live feeds with no I/O: what a provider is, duplicate and gap detection, per-symbol
sequence numbers, reconnect backoff.

A provider (``ticktape/core/alpaca.py``, ``ticktape/core/polygon.py``) is one module
defining a ``PROVIDER``: its stream URL, its auth and subscribe messages, the check of
each handshake step (connected, authenticated, subscribed) and the parse of one message
of a frame (frames are JSON arrays of messages for every provider so far).  The
WebSocket adapter (``producers/websocket.py``) does the rest for all of them.

A live stream over one TCP connection loses nothing, so data can only go missing while
the feed reconnects.  Per symbol and stream (``tick`` or ``bar``) the tracker therefore
checks continuity at the first event after a reconnect:

* an event already seen (the provider replayed an overlap) proves continuity;
* a bar whose window follows the last bar's window directly proves it too;
* anything else is a *gap*: that symbol may have missed data during the outage.

Duplicates are recognised by event id in a bounded memory of the last ``depth`` ids per
symbol and stream.  An event older than everything that memory still covers cannot be
checked; it is treated as a duplicate (a replay from further back) rather than risk
publishing a fact twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, NamedTuple

DEFAULT_DEPTH = 2048
HANDSHAKE = ("connected", "authenticated", "subscribed")  # the steps ``Provider.expect`` checks


class ProviderError(Exception):
    """An error message from the provider; ``retry`` False when reconnecting cannot fix it
    (a bad key, a plan that lacks the feed): the feed then ends with this message."""

    def __init__(self, provider: str, code, msg: str, meaning: str | None = None, retry: bool = True):
        self.code, self.retry = code, retry
        super().__init__(f"{provider} error {code}: {msg}" + (f" ({meaning})" if meaning and meaning != msg else ""))


class ProtocolError(Exception):
    """The server said something the protocol does not allow at this point."""


class Parsed(NamedTuple):
    """One message of a frame, classified.  ``kind``: a data kind (``trade``, ``quote``,
    ``bar``: then ``topic``, ``event_type`` and ``event`` are set), ``control``,
    ``ignored`` (a type this project does not publish), ``unknown`` (``detail``: the
    type) or ``malformed`` (``detail``: why).  Error messages raise ProviderError."""

    kind: str
    event: dict | None = None
    topic: str = ""
    event_type: str = ""
    detail: str = ""


def number(m: dict, key: str) -> float:
    """``m[key]``, which must be a JSON number (a provider's price, size or volume)."""
    value = m[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} is not a number: {value!r}")
    return float(value)


def tick(
    source: str,
    event_id: str,
    symbol: str,
    ts: int,
    *,
    price: float | None = None,
    size: float | None = None,
    bid: float | None = None,
    ask: float | None = None,
    bid_size: float | None = None,
    ask_size: float | None = None,
) -> dict:
    """A Tick of a provider's trade (price, size) or quote (bid, ask and sizes); ``seq``
    is set by the feed tracker."""
    return {
        "event_id": event_id,
        "symbol": symbol,
        "ts": ts,
        "source": source,
        "seq": 0,
        "price": price,
        "size": size,
        "bid": bid,
        "ask": ask,
        "bid_size": bid_size,
        "ask_size": ask_size,
    }


def parse_typed(
    m: Any,
    field: str,
    types: dict,
    control: Callable[[str, dict], Parsed | None],
    ignored: Collection[str],
    untyped: str,
) -> Parsed:
    """One message of a provider whose messages name their type in ``field``: a data point
    by the ``types`` table (type -> (kind for metrics, topic, event type, mapper)), else
    what ``control(type, m)`` makes of it (it may raise ProviderError), else ``ignored``
    or ``unknown``; ``malformed`` (``untyped``) without a type.  A data point its mapper
    cannot read is ``malformed``, naming why."""
    kind = m.get(field) if isinstance(m, dict) else None
    if not isinstance(kind, str):
        return Parsed("malformed", detail=untyped)
    spec = types.get(kind)
    if spec is not None:
        name, topic, event_type, mapper = spec
        try:
            return Parsed(name, mapper(m), topic, event_type)
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as e:
            return Parsed("malformed", detail=f"{name} ({type(e).__name__}: {e})")
    parsed = control(kind, m)
    if parsed is not None:
        return parsed
    return Parsed("ignored") if kind in ignored else Parsed("unknown", detail=kind)


@dataclass(frozen=True)
class Provider:
    name: str  # --provider
    source: str  # the events' ``source`` and the metrics' label
    channels: tuple[str, ...]  # what --channels may name (all by default)
    credentials: tuple[str, ...]  # settings (lower-case env names) auth() takes, in order
    feed_setting: str  # the setting naming the provider's feed/cluster, passed to url()
    url: Callable[[str], str]  # feed -> stream URL
    auth: Callable[..., str]  # credentials -> the auth message
    subscribe: Callable[[list[str], tuple[str, ...]], str]  # (symbols, channels) -> message
    expect: Callable[[Any, str], dict]  # (decoded frame, HANDSHAKE step) -> its message, or raise
    parse: Callable[[Any], Parsed]
    # (subscription ack, channel) -> provider symbols it confirms ("*" = all), None = not told
    confirmed: Callable[[dict, str], set[str] | None]
    to_provider_symbol: Callable[[str], str]


class Gap(NamedTuple):
    symbol: str
    stream: str  # "tick" or "bar"
    last_ts: int  # event time of the last event before the reconnect (µs)
    first_ts: int  # event time of the first new event after it (µs)


@dataclass
class _Stream:
    ids: dict[str, int] = field(default_factory=dict)  # event id -> ts, oldest first
    floor_ts: int = -1  # newest ts evicted from ``ids``
    last_ts: int = -1
    seq: int = 0
    unverified: bool = False  # a reconnect happened since the last event


class FeedTracker:
    """Decide for each received event whether it is new, and number ticks per symbol."""

    def __init__(self, depth: int = DEFAULT_DEPTH):
        if depth < 1:
            raise ValueError("dedupe depth must be at least 1")
        self.depth = depth
        self._streams: dict[tuple[str, str], _Stream] = {}

    def reconnected(self) -> None:
        """The connection was re-established: continuity is unknown for every stream."""
        for st in self._streams.values():
            st.unverified = True

    def tick(self, event: dict) -> tuple[bool, Gap | None]:
        """(is new, gap found) for a Tick; a new tick gets its ``seq``."""
        new, gap, st = self._see("tick", event, contiguous=False)
        if new:
            st.seq += 1
            event["seq"] = st.seq
        return new, gap

    def bar(self, event: dict) -> tuple[bool, Gap | None]:
        """(is new, gap found) for a Bar; contiguous windows prove continuity."""
        st = self._streams.get((event["symbol"], "bar"))
        contiguous = st is not None and event["window_start"] <= st.last_ts
        new, gap, _ = self._see("bar", event, contiguous=contiguous)
        return new, gap

    def _see(self, stream: str, event: dict, contiguous: bool) -> tuple[bool, Gap | None, _Stream]:
        key = (event["symbol"], stream)
        st = self._streams.get(key)
        if st is None:
            st = self._streams[key] = _Stream()
        eid, ts = event["event_id"], event["ts"]
        if eid in st.ids or ts < st.floor_ts:
            st.unverified = False  # an overlap with what we had: nothing was missed
            return False, None, st
        gap = None
        if st.unverified and not contiguous:
            gap = Gap(event["symbol"], stream, st.last_ts, ts)
        st.unverified = False
        st.ids[eid] = ts
        if len(st.ids) > self.depth:
            oldest = next(iter(st.ids))
            st.floor_ts = max(st.floor_ts, st.ids.pop(oldest))
        st.last_ts = max(st.last_ts, ts)
        return True, gap, st


def backoff_delays(base: float, cap: float, rng: random.Random | None = None):
    """Endless reconnect delays: exponential (base, 2·base, … up to cap) with full
    jitter, so many clients dropped at once do not reconnect in lockstep."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        yield rng.uniform(0, min(cap, base * 2**attempt))
        attempt = min(attempt + 1, 30)

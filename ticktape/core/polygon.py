"""Polygon.io stocks WebSocket (``wss://socket.polygon.io/stocks`` real-time,
``wss://delayed.polygon.io/stocks`` 15-minute delayed), with no I/O: the client's
messages, the classification of the server's, and their mapping to Tick and Bar events.

Every frame is a JSON array of events tagged by ``ev``: ``status`` (``connected``,
``auth_success``, ``auth_failed``, ``success`` for each subscription, ``error``,
``max_connections``) and data: ``T`` trade, ``Q`` quote, ``AM`` minute aggregate, and
others this project does not publish (``A`` second aggregates, ``LULD``, ``NOI``,
``FMV``).  Times are Unix milliseconds.  A subscription is ``<ev>.<ticker>``; tickers
of class shares are written with a dot (``BRK.B``), the project writes a dash.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from ticktape.core.feed import Parsed, ProtocolError, Provider, ProviderError, number, parse_typed, tick

SOURCE = "websocket:polygon"
CLUSTERS = {"realtime": "wss://socket.polygon.io/stocks", "delayed": "wss://delayed.polygon.io/stocks"}
CHANNELS = ("trades", "quotes", "bars")
PREFIX = {"trades": "T", "quotes": "Q", "bars": "AM"}
BAR_US = 60_000_000
BAR_TOPIC = "md.bars.1m"
TICK_TOPIC = "md.ticks"
IGNORED_TYPES = {"A": "second aggregate", "LULD": "LULD band", "NOI": "imbalance", "FMV": "fair market value"}

# status -> (meaning, retry?)
ERRORS = {
    "auth_failed": ("auth failed: check POLYGON_API_KEY", False),
    "max_connections": ("connection limit exceeded: another client is connected with this key", True),
    "error": ("request refused: check the plan (POLYGON_FEED) and the symbols", False),
}
# the status that answers each handshake step
EXPECTED = {"connected": "connected", "authenticated": "auth_success", "subscribed": "success"}


def to_provider_symbol(symbol: str) -> str:
    return symbol.replace("-", ".")


def from_provider_symbol(symbol: str) -> str:
    return symbol.replace(".", "-")


def url(feed: str) -> str:
    try:
        return CLUSTERS[feed]
    except KeyError:
        raise ValueError(f"POLYGON_FEED={feed!r}: use {' or '.join(CLUSTERS)}") from None


def auth_message(key: str) -> str:
    return json.dumps({"action": "auth", "params": key})


def subscribe_message(symbols: list[str], channels: tuple[str, ...] = CHANNELS) -> str:
    params = [f"{PREFIX[ch]}.{to_provider_symbol(s)}" for ch in channels for s in symbols]
    return json.dumps({"action": "subscribe", "params": ",".join(params)})


def _status_error(m: dict) -> ProviderError:
    status = str(m.get("status"))
    meaning, retry = ERRORS.get(status, (None, True))
    return ProviderError("polygon", status, str(m.get("message", "")), meaning, retry)


def check_status(messages, expected: str) -> dict:
    """The first status of a frame, which must answer handshake step ``expected``; an
    error status raises ProviderError.  (Polygon acknowledges each subscription with its
    own ``success`` status; the later ones are counted as control messages.)"""
    if (
        not isinstance(messages, list)
        or not messages
        or not isinstance(messages[0], dict)
        or messages[0].get("ev") != "status"
    ):
        raise ProtocolError(f"expected a status ({expected}), got {str(messages)[:200]}")
    m = messages[0]
    status = m.get("status")
    if status == EXPECTED[expected]:
        return m
    if status in ERRORS:
        raise _status_error(m)
    raise ProtocolError(f"expected status {EXPECTED[expected]}, got {str(m)[:200]}")


def _ms(m: dict, key: str) -> int:
    value = m[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} is not integer milliseconds: {value!r}")
    return value * 1000


def _day(us: int) -> str:
    return datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc).strftime("%Y-%m-%d")


def tick_from_trade(m: dict) -> dict:
    """Tick of a trade ``{"ev":"T","sym","x","i","z","p","s","c","t","q"}``.  The id
    is the trade id, unique per ticker, exchange and day: a replayed trade keeps its
    event id."""
    ts = _ms(m, "t")
    symbol = from_provider_symbol(m["sym"])
    trade_id = m["i"]
    if not isinstance(trade_id, (str, int)) or isinstance(trade_id, bool) or trade_id == "":
        raise ValueError(f"i is not a trade id: {trade_id!r}")
    event_id = f"{SOURCE}:{symbol}:t:{_day(ts)}:{int(m['x'])}:{trade_id}"
    return tick(SOURCE, event_id, symbol, ts, price=number(m, "p"), size=number(m, "s"))


def tick_from_quote(m: dict) -> dict:
    """Tick of a quote ``{"ev":"Q","sym","bx","bp","bs","ax","ap","as","c","i","t","q","z"}``;
    ``q``, the sequence number (unique per ticker and day), identifies it."""
    ts = _ms(m, "t")
    symbol = from_provider_symbol(m["sym"])
    seq = m["q"]
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ValueError(f"q is not a sequence number: {seq!r}")
    bid, ask, bid_size, ask_size = number(m, "bp"), number(m, "ap"), number(m, "bs"), number(m, "as")
    event_id = f"{SOURCE}:{symbol}:q:{_day(ts)}:{seq}"
    return tick(SOURCE, event_id, symbol, ts, bid=bid, ask=ask, bid_size=bid_size, ask_size=ask_size)


def bar_from_aggregate(m: dict) -> dict:
    """Bar of a minute aggregate ``{"ev":"AM","sym","v","av","op","vw","o","c","h","l","a","z","s","e"}``
    (``s``/``e``: window start/end, ``z``: average trade size, so trades = v / z)."""
    start, end = _ms(m, "s"), _ms(m, "e")
    if end - start != BAR_US:
        raise ValueError(f"not a minute window: s={m['s']} e={m['e']}")
    symbol = from_provider_symbol(m["sym"])
    volume, avg_size = number(m, "v"), number(m, "z")
    return {
        "event_id": f"{symbol}:1m:{start}",
        "symbol": symbol,
        "interval": "1m",
        "ts": end,
        "window_start": start,
        "window_end": end,
        "open": number(m, "o"),
        "high": number(m, "h"),
        "low": number(m, "l"),
        "close": number(m, "c"),
        "volume": volume,
        "vwap": number(m, "vw"),
        "trade_count": round(volume / avg_size) if avg_size else 0,
    }


# ev -> (kind for metrics, topic, event type, mapper)
DATA_TYPES = {
    "T": ("trade", TICK_TOPIC, "tick", tick_from_trade),
    "Q": ("quote", TICK_TOPIC, "tick", tick_from_quote),
    "AM": ("bar", BAR_TOPIC, "bar", bar_from_aggregate),
}


def _control(ev: str, m: dict) -> Parsed | None:
    if ev != "status":
        return None
    if m.get("status") in ERRORS:
        raise _status_error(m)
    return Parsed("control")


def parse(m) -> Parsed:
    return parse_typed(m, "ev", DATA_TYPES, _control, IGNORED_TYPES, "not an event")


PROVIDER = Provider(
    name="polygon",
    source=SOURCE,
    channels=CHANNELS,
    credentials=("polygon_api_key",),
    feed_setting="polygon_feed",
    url=url,
    auth=auth_message,
    subscribe=subscribe_message,
    expect=check_status,
    parse=parse,
    confirmed=lambda ack, channel: None,
    to_provider_symbol=to_provider_symbol,
)

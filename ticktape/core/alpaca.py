"""Alpaca market-data stream v2 (``wss://stream.data.alpaca.markets/v2/{feed}``), with no
I/O: the client's messages, the classification of the server's, and their mapping to
Tick and Bar events.

The server sends JSON arrays of objects tagged by ``T``: control messages (``success``,
``error``, ``subscription``; always alone in their array) and data points (``t`` trade,
``q`` quote, ``b`` minute bar, and others this project does not publish: corrections,
cancel errors, statuses, LULD bands, updated and daily bars).

Symbols: the project writes class shares with a dash (``BRK-B``), Alpaca with a dot
(``BRK.B``); events always carry the project's spelling.
"""

from __future__ import annotations

import json
import zlib
from datetime import datetime, timedelta, timezone

from ticktape.core.feed import Parsed, ProtocolError, Provider, ProviderError, number, parse_typed, tick

SOURCE = "websocket:alpaca"
STREAM_URL = "wss://stream.data.alpaca.markets/v2/{feed}"
CHANNELS = ("trades", "quotes", "bars")
BAR_US = 60_000_000  # the stream's bars are minute bars
BAR_TOPIC = "md.bars.1m"
TICK_TOPIC = "md.ticks"

# Data point types sent by the stream that have no event in this project.
IGNORED_TYPES = {
    "c": "trade correction",
    "x": "trade cancel/error",
    "s": "trading status",
    "l": "LULD band",
    "u": "updated bar",
    "d": "daily bar",
    "i": "imbalance",
}

# code -> (meaning, retry?).  Retrying cannot fix a bad key, a plan or a symbol list:
# those end the feed with one clear message instead of a reconnect storm.
ERRORS: dict[int | None, tuple[str, bool]] = {
    400: ("invalid syntax", False),
    401: ("not authenticated", False),
    402: ("auth failed: check ALPACA_API_KEY_ID and ALPACA_API_SECRET_KEY", False),
    403: ("already authenticated", False),
    404: ("auth timeout", True),
    405: ("symbol limit exceeded: subscribe to fewer symbols", False),
    406: ("connection limit exceeded: another client is connected with these keys", True),
    407: ("slow client: the feed could not keep up (see WEBSOCKET_ON_FULL)", True),
    408: ("v2 not enabled for this account", False),
    409: ("insufficient subscription: this feed needs a plan that includes it (ALPACA_FEED)", False),
    410: ("invalid subscribe action for this feed", False),
    500: ("internal error", True),
}


def error(code: int | None, msg: str) -> ProviderError:
    meaning, retry = ERRORS.get(code, (msg, True))
    return ProviderError("alpaca", code, msg, meaning, retry)


def to_provider_symbol(symbol: str) -> str:
    return symbol.replace("-", ".")


def from_provider_symbol(symbol: str) -> str:
    return symbol.replace(".", "-")


def auth_message(key: str, secret: str) -> str:
    return json.dumps({"action": "auth", "key": key, "secret": secret})


def subscribe_message(symbols: list[str], channels: tuple[str, ...] = CHANNELS) -> str:
    provider = [to_provider_symbol(s) for s in symbols]
    return json.dumps({"action": "subscribe", **{ch: provider for ch in channels}})


def check_control(messages: list, expected: str) -> dict:
    """The single control message of an array, which must be ``expected``
    ("connected", "authenticated" or "subscribed"); an ``error`` raises ProviderError."""
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        raise ProtocolError(f"expected one control message ({expected}), got {str(messages)[:200]}")
    m = messages[0]
    kind = m.get("T")
    if kind == "error":
        raise error(m.get("code"), str(m.get("msg", "")))
    if expected == "subscribed" and kind == "subscription":
        return m
    if kind == "success" and m.get("msg") == expected:
        return m
    raise ProtocolError(f"expected {expected}, got {str(m)[:200]}")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


def rfc3339_us(text: str) -> int:
    """RFC-3339 time (nanosecond precision allowed, truncated) → µs since the epoch."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return (dt - _EPOCH) // _US


def tick_from_trade(m: dict) -> dict:
    """Tick of a trade ``{"T":"t","S","i","x","p","s","t","c","z"}``.  The id is the
    provider's trade id, unique per symbol, exchange and day, so a replayed trade keeps
    its event id.  ``seq`` is filled in by the feed tracker."""
    t = m["t"]
    symbol = from_provider_symbol(m["S"])
    event_id = f"{SOURCE}:{symbol}:t:{t[:10]}:{m['x']}:{int(m['i'])}"
    return tick(SOURCE, event_id, symbol, rfc3339_us(t), price=number(m, "p"), size=number(m, "s"))


def tick_from_quote(m: dict) -> dict:
    """Tick of a quote ``{"T":"q","S","bx","bp","bs","ax","ap","as","t","c","z"}``.
    Quotes carry no id: the nanosecond timestamp plus a checksum of the book identify it."""
    t = m["t"]
    symbol = from_provider_symbol(m["S"])
    bid, ask, bid_size, ask_size = number(m, "bp"), number(m, "ap"), number(m, "bs"), number(m, "as")
    book = f"{m.get('bx')}|{bid!r}|{bid_size!r}|{m.get('ax')}|{ask!r}|{ask_size!r}"
    event_id = f"{SOURCE}:{symbol}:q:{t}:{zlib.crc32(book.encode()):08x}"
    return tick(SOURCE, event_id, symbol, rfc3339_us(t), bid=bid, ask=ask, bid_size=bid_size, ask_size=ask_size)


def bar_from_bar(m: dict) -> dict:
    """Bar of a minute bar ``{"T":"b","S","o","h","l","c","v","t","n","vw"}``; ``t`` is
    the window start, the event time is the window end."""
    start = rfc3339_us(m["t"])
    symbol = from_provider_symbol(m["S"])
    return {
        "event_id": f"{symbol}:1m:{start}",
        "symbol": symbol,
        "interval": "1m",
        "ts": start + BAR_US,
        "window_start": start,
        "window_end": start + BAR_US,
        "open": number(m, "o"),
        "high": number(m, "h"),
        "low": number(m, "l"),
        "close": number(m, "c"),
        "volume": number(m, "v"),
        "vwap": number(m, "vw"),
        "trade_count": int(m["n"]),
    }


# data point type -> (kind for metrics, topic, event type, mapper)
DATA_TYPES = {
    "t": ("trade", TICK_TOPIC, "tick", tick_from_trade),
    "q": ("quote", TICK_TOPIC, "tick", tick_from_quote),
    "b": ("bar", BAR_TOPIC, "bar", bar_from_bar),
}


def _control(kind: str, m: dict) -> Parsed | None:
    if kind == "error":
        raise error(m.get("code"), str(m.get("msg", "")))
    return Parsed("control") if kind in ("success", "subscription") else None


def parse(m) -> Parsed:
    return parse_typed(m, "T", DATA_TYPES, _control, IGNORED_TYPES, "not a typed message")


def confirmed(ack: dict, channel: str) -> set[str]:
    return set(ack.get(channel) or [])


PROVIDER = Provider(
    name="alpaca",
    source=SOURCE,
    channels=CHANNELS,
    credentials=("alpaca_api_key_id", "alpaca_api_secret_key"),
    feed_setting="alpaca_feed",
    url=lambda feed: STREAM_URL.format(feed=feed),
    auth=auth_message,
    subscribe=subscribe_message,
    expect=check_control,
    parse=parse,
    confirmed=confirmed,
    to_provider_symbol=to_provider_symbol,
)

"""Kafka -> Redis writer: the latest state per symbol (and account) as hashes with a TTL.

Keys (``<prefix>`` = the run's topic prefix, empty for the live run, so a backtest
never touches live keys):

======================================================  ===================
``<prefix>ticktape:tick:<symbol>``                      latest Tick
``<prefix>ticktape:bar:<interval>:<symbol>``            latest Bar
``<prefix>ticktape:indicators:<interval>:<symbol>``     latest IndicatorSet
``<prefix>ticktape:prediction:<symbol>``                latest Prediction
``<prefix>ticktape:position:<account>:<symbol>``        latest Position
``<prefix>ticktape:portfolio:<account>``                latest Equity (portfolio summary)
``<prefix>ticktape:risk:<account>``                     latest RiskState (trading state)
======================================================  ===================

Each hash holds the event's fields as strings (``ts`` in microseconds since the epoch,
null as an empty string, the prediction's features as JSON).  A write replaces a hash
only when its ``ts`` is not older than the stored one (a Lua script), so redelivered
or replayed events never roll the state back.  One pipeline per batch.
"""

from __future__ import annotations

import json

import redis

from ticktape import metrics
from ticktape.config import ConfigError, Settings, redact_url

from .runner import Item, Outage, Poison
from .tables import expected_event, topics_of_record

# Event type -> key (after "<prefix>ticktape:"), filled from the event's fields.
KEY_FORMATS = {
    "tick": "tick:{symbol}",
    "bar": "bar:{interval}:{symbol}",
    "indicator_set": "indicators:{interval}:{symbol}",
    "prediction": "prediction:{symbol}",
    "position": "position:{account}:{symbol}",
    "equity": "portfolio:{account}",
    "risk_state": "risk:{account}",
}

# KEYS[1] = hash, ARGV = ts, ttl, field, value, ...: write only if not older than stored.
_SET_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], 'ts')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def topics() -> list[str]:
    """Catalog topics whose events have a latest-state key."""
    return [t for t in topics_of_record() if expected_event(t) in KEY_FORMATS]


def state_key(prefix: str, event: str, record: dict) -> str:
    return f"{prefix}ticktape:" + KEY_FORMATS[event].format_map(record)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def latest_state(prefix: str, items: list[Item]) -> dict[str, tuple[int, dict[str, str]]]:
    """key -> (ts, hash fields) of the newest event per key in a batch (ties: the later one)."""
    out: dict[str, tuple[int, dict[str, str]]] = {}
    for it in items:
        key = state_key(prefix, it.event, it.record)
        ts = it.record["ts"]
        if key not in out or ts >= out[key][0]:
            out[key] = (ts, {k: _text(v) for k, v in it.record.items()})
    return out


class RedisWriter:
    name = "redis"

    def __init__(self, s: Settings):
        if not s.redis_url:
            raise ConfigError("no Redis: set REDIS_URL or run `ticktape stack up`")
        self.url = s.redis_url
        self.client = redis.Redis.from_url(s.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.script = self.client.register_script(_SET_IF_NEWER)
        self.prefix = s.topic_prefix
        self.ttl = s.redis_ttl_s

    def write(self, items: list[Item]) -> list[Poison]:
        # Decoded events always carry their key fields: nothing here is poison.
        latest = latest_state(self.prefix, items)
        pipe = self.client.pipeline(transaction=False)
        for key, (ts, fields) in latest.items():
            flat = [x for kv in fields.items() for x in kv]
            self.script(keys=[key], args=[ts, self.ttl, *flat], client=pipe)
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as e:  # down, or still loading its data
            raise Outage(f"{type(e).__name__}: {e}") from e
        metrics.SINK_ROWS.labels(self.name, "latest").inc(len(latest))
        metrics.SINK_BATCHES.labels(self.name, "latest").inc()
        return []

    def check(self) -> None:
        """ConfigError when Redis does not answer now (the sink's start: one line, not a retry loop)."""
        try:
            self.client.ping()
        except redis.RedisError as e:
            raise ConfigError(f"Redis at {redact_url(self.url)} does not answer: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        self.client.close()

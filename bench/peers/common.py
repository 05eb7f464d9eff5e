"""What both peer jobs share: the run's settings from env vars, ticktape's Avro ticks
decoded with fastavro alone (these jobs run without ticktape installed), the bar they
write, and the progress file the benchmark reads.

Env: PEER_BROKER, PEER_INPUT (topic), PEER_OUTPUT_PREFIX (bars go to
<prefix>md.bars.<interval>), PEER_GROUP, PEER_GRACE_MS, PEER_EXPECT (ticks to count),
PEER_STATS (file: the wall and CPU times at the first and the PEER_EXPECT-th tick).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import fastavro


def _plain(schema):
    """The schema without logical types: ts stays the integer of microseconds (as
    ticktape.serde reads it; these jobs cannot import ticktape)."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


SCHEMA = fastavro.parse_schema(
    _plain(json.loads((Path(__file__).resolve().parents[2] / "schemas" / "tick.v1.avsc").read_text()))
)
INTERVALS = {"1s": 1_000, "1m": 60_000}  # ms
BROKER = os.environ["PEER_BROKER"]
INPUT = os.environ["PEER_INPUT"]
OUTPUT_PREFIX = os.environ["PEER_OUTPUT_PREFIX"]
GROUP = os.environ["PEER_GROUP"]
GRACE_MS = int(os.environ["PEER_GRACE_MS"])


def decode(value: bytes) -> dict:
    """A Tick in ticktape's single-object encoding (2 magic bytes, 8 of fingerprint)."""
    if value[:2] != b"\xc3\x01":
        raise ValueError(f"not a single-object Avro message: {value[:4].hex()}")
    return fastavro.schemaless_reader(io.BytesIO(value[10:]), SCHEMA, SCHEMA)


def bar(symbol: str, interval: str, start_ms: int, o, h, low, c, volume, trades) -> bytes:
    return json.dumps(
        {
            "symbol": symbol,
            "interval": interval,
            "window_start": start_ms * 1000,
            "open": o,
            "high": h,
            "low": low,
            "close": c,
            "volume": volume,
            "trade_count": trades,
        }
    ).encode()


class Progress:
    """Counts ticks; writes the wall and CPU times (the process's, all threads) at the
    first and the expected last."""

    def __init__(self) -> None:
        self.expect = int(os.environ["PEER_EXPECT"])
        self.path = Path(os.environ["PEER_STATS"])
        self.count = 0
        self.first = (0.0, 0.0)

    def tick(self) -> None:
        self.count += 1
        if self.count == 1:
            self.first = (time.time(), time.process_time())
        if self.count == self.expect:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "first_wall": self.first[0],
                        "first_cpu": self.first[1],
                        "last_wall": time.time(),
                        "last_cpu": time.process_time(),
                    }
                )
            )
            tmp.replace(self.path)  # the benchmark never reads half a file

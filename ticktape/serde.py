"""Avro serialization of events (SPEC §3).

Two wire formats, both readable by any Avro reader:

* without a Schema Registry: Avro *single-object encoding* — ``C3 01`` + the 8-byte
  little-endian CRC-64-AVRO fingerprint of the writer schema's canonical form + the
  Avro body.  A reader finds the writer schema by fingerprint among ``schemas/*.avsc``.
* with ``SCHEMA_REGISTRY_URL``: Confluent's format — ``00`` + 4-byte big-endian schema
  id + the Avro body; schemas are registered under ``<topic>-value``.

Inside the process event times are ints (microseconds since the epoch, UTC): the
binary encoding of ``timestamp-micros`` is a plain long, so the codecs use copies of
the schemas without the logical type and skip datetime conversion.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import fastavro
import numpy as np
from fastavro.schema import fingerprint, to_parsing_canonical_form

from .avro_compiled import Unsupported, compile_reader, compile_writer, read_long, read_string
from .config import REPO_ROOT

SCHEMA_DIR = REPO_ROOT / "schemas"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"


class SerdeError(ValueError):
    """A message that cannot be decoded or a record that cannot be encoded."""


# Longest string a decoded event may hold: ids and names end up in keys and indexes (a
# PostgreSQL btree refuses entries over ~2.7 kB), free text does not.
MAX_STRING = 256
_MAX_LENGTHS = {"symbol": 64, "account": 64, "detail": 4096, "reason": 4096}


def check_length(name: str, value: str) -> None:
    limit = _MAX_LENGTHS.get(name, MAX_STRING)
    if len(value) > limit:
        raise SerdeError(f"{name} is {len(value)} characters long (at most {limit})")


def _check_strings(record: dict) -> None:
    """SerdeError when a string of the record (a map key, a TickBatch column) is too long."""
    for name, v in record.items():
        if type(v) is str:
            check_length(name, v)
        elif type(v) is dict:
            for k, x in v.items():
                check_length(f"{name} key", k)
                for y in x if type(x) is list else (x,):
                    if type(y) is str:
                        check_length(f"{name}.{k}", y)


def _strip_logical_types(schema):
    if isinstance(schema, dict):
        out = {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
        return out
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    return schema


@dataclass(frozen=True)
class SchemaVersion:
    event_type: str  # file stem before the version: "tick", "bar", ...
    version: int
    path: Path
    schema: dict  # as written in the file
    parsed: dict  # fastavro-parsed, logical types stripped (ints for timestamps)
    canonical: str
    fingerprint: bytes  # 8 bytes, little endian CRC-64-AVRO
    write: Callable[[dict, bytearray], None] | None = field(default=None, compare=False, repr=False)  # compiled
    read: Callable[[bytes, int], tuple[dict, int]] | None = field(default=None, compare=False, repr=False)


def _load_version(path: Path) -> SchemaVersion:
    event_type, vpart = path.name[: -len(".avsc")].rsplit(".v", 1)
    schema = json.loads(path.read_text())
    parsed_full = fastavro.parse_schema(copy.deepcopy(schema))
    canonical = to_parsing_canonical_form(parsed_full)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    parsed = cast(dict, fastavro.parse_schema(_strip_logical_types(schema)))  # a record schema: a dict
    return SchemaVersion(
        event_type, int(vpart), path, schema, parsed, canonical, fp, compile_writer(parsed), compile_reader(parsed)
    )


class SchemaCatalog:
    """Every version of every event schema in ``schemas/``."""

    def __init__(self, directory: Path = SCHEMA_DIR):
        self.versions: dict[str, list[SchemaVersion]] = {}
        self.by_fingerprint: dict[bytes, SchemaVersion] = {}
        for path in sorted(directory.glob("*.v*.avsc")):
            sv = _load_version(path)
            self.versions.setdefault(sv.event_type, []).append(sv)
            self.by_fingerprint[sv.fingerprint] = sv
        for versions in self.versions.values():
            versions.sort(key=lambda v: v.version)

    def latest(self, event_type: str) -> SchemaVersion:
        try:
            return self.versions[event_type][-1]
        except KeyError:
            raise SerdeError(f"unknown event type {event_type!r}") from None

    @property
    def event_types(self) -> list[str]:
        return sorted(self.versions)


_catalog: SchemaCatalog | None = None


def catalog() -> SchemaCatalog:
    global _catalog
    if _catalog is None:
        _catalog = SchemaCatalog()
    return _catalog


class RegistryClient:
    """The few calls of the Confluent Schema Registry REST API the codecs need."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise SerdeError(f"schema registry {method} {path}: HTTP {e.code} {e.read()[:200]!r}") from None
        except urllib.error.URLError as e:
            raise SerdeError(f"schema registry unreachable: {e.reason}") from None

    def register(self, subject: str, schema_json: str) -> int:
        key = (subject, schema_json)
        with self._lock:
            if key not in self._ids:
                resp = self._call("POST", f"/subjects/{subject}/versions", {"schema": schema_json})
                self._ids[key] = int(resp["id"])
                self._schemas[self._ids[key]] = schema_json
            return self._ids[key]

    def schema(self, schema_id: int) -> str:
        with self._lock:
            if schema_id not in self._schemas:
                self._schemas[schema_id] = self._call("GET", f"/schemas/ids/{schema_id}")["schema"]
            return self._schemas[schema_id]


class Serde:
    """Encode/decode events; one instance per process is enough (thread-safe caches)."""

    def __init__(self, registry_url: str = "", schemas: SchemaCatalog | None = None):
        self.schemas = schemas or catalog()
        self.registry = RegistryClient(registry_url) if registry_url else None
        self._writers_by_id: dict[int, SchemaVersion] = {}

    # -- encoding -------------------------------------------------------------------
    def encode(self, event_type: str, record: dict, topic: str | None = None) -> bytes:
        sv = self.schemas.latest(event_type)
        if self.registry is not None:
            if topic is None:
                raise SerdeError("a topic is needed to register schemas (subject <topic>-value)")
            schema_id = self.registry.register(f"{topic}-value", json.dumps(sv.schema))
            header = CONFLUENT_MAGIC + struct.pack(">I", schema_id)
        else:
            header = SINGLE_OBJECT_MAGIC + sv.fingerprint
        if sv.write is not None:
            out = bytearray(header)
            try:
                sv.write(record, out)
                return bytes(out)
            except (Unsupported, KeyError, UnicodeEncodeError):
                pass  # fastavro writes it, or says what is wrong with it
        buf = io.BytesIO()
        buf.write(header)
        try:
            fastavro.schemaless_writer(buf, sv.parsed, record)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
            raise SerdeError(f"cannot encode {event_type}: {type(e).__name__}: {e}") from None
        return buf.getvalue()

    # -- decoding -------------------------------------------------------------------
    def decode(self, data: bytes) -> tuple[str, dict]:
        """(event_type, record) of a message in either wire format."""
        writer, body = self._writer(data)
        reader = self.schemas.latest(writer.event_type)
        try:
            if reader is writer and writer.read is not None:
                record, _ = writer.read(data, body)
            else:  # an older version: fastavro resolves it to the latest
                record = cast(
                    dict,
                    fastavro.schemaless_reader(  # an event schema is a record: a dict
                        io.BytesIO(data[body:]), writer.parsed, reader.parsed
                    ),
                )
        except Exception as e:  # fastavro raises many types on corrupt bodies
            raise SerdeError(f"corrupt {writer.event_type} body: {type(e).__name__}: {e}") from None
        _check_strings(record)
        return writer.event_type, record

    def _writer(self, data: bytes) -> tuple[SchemaVersion, int]:
        """The writer schema of a message and where its Avro body starts."""
        if not data:
            raise SerdeError("empty message")
        if data[:2] == SINGLE_OBJECT_MAGIC and len(data) >= 10:
            writer = self.schemas.by_fingerprint.get(data[2:10])
            if writer is None:
                raise SerdeError(f"unknown schema fingerprint {data[2:10].hex()}")
            return writer, 10
        if data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            return self._writer_for_id(struct.unpack(">I", data[1:5])[0]), 5
        raise SerdeError(f"not an Avro event (first bytes {data[:4].hex()})")

    def decode_trades(self, data: bytes) -> tuple[str, str | None, list, list, list]:
        """``(event_type, symbol, ts, price, size)`` of a message: the columns bars are
        made of, for one Tick or every tick of a TickBatch (empty lists for other events).

        A Tick written with ``tick.v1`` is read by ``read_trade`` and a TickBatch written with
        ``tick_batch.v1`` by ``read_trade_columns`` (the arrays a column at a time); both stop
        after ``size``: several times faster than decoding every field with fastavro."""
        writer, body = self._writer(data)
        if writer.version == 1 and writer.event_type in ("tick", "tick_batch"):
            try:
                if writer.event_type == "tick":
                    event_id, symbol, t, p, z = read_trade(data, body)
                    ts, price, size = [t], [p], [z]
                else:
                    event_id, symbol, ts, price, size = read_trade_columns(data, body)
            except (IndexError, ValueError, UnicodeDecodeError, struct.error) as e:
                raise SerdeError(f"corrupt {writer.event_type} body: {type(e).__name__}: {e}") from None
            check_length("event_id", event_id)
            check_length("symbol", symbol)
            return writer.event_type, symbol, ts, price, size
        event_type, record = self.decode(data)
        if event_type == "tick":
            return event_type, record["symbol"], [record["ts"]], [record["price"]], [record["size"]]
        if event_type == "tick_batch":
            cols = record["ticks"]
            return event_type, record["symbol"], cols["ts"], cols["price"], cols["size"]
        return event_type, None, [], [], []

    def _writer_for_id(self, schema_id: int) -> SchemaVersion:
        if self.registry is None:
            raise SerdeError("message in Schema Registry format but SCHEMA_REGISTRY_URL is not set")
        if schema_id not in self._writers_by_id:
            parsed = fastavro.parse_schema(json.loads(self.registry.schema(schema_id)))
            fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
            sv = self.schemas.by_fingerprint.get(fp)
            if sv is None:
                raise SerdeError(f"registry schema id {schema_id} is not one of schemas/*.avsc")
            self._writers_by_id[schema_id] = sv
        return self._writers_by_id[schema_id]


# -- the trades the bar stage needs, of a Tick, or of a TickBatch a column at a time ----
# Avro binary encoding: a long is a zigzag varint, a string its byte length (a long) and
# UTF-8, an array a series of blocks (item count, items; a negative count is followed by
# the block's byte size) ended by a zero count, a union the branch index then the value.
def _blocks(data: bytes, pos: int, read_items) -> tuple[list, int]:
    out: list = []
    while True:
        count, pos = read_long(data, pos)
        if count == 0:
            return out, pos
        if count < 0:
            count = -count
            _, pos = read_long(data, pos)  # block size in bytes
        items, pos = read_items(data, pos, count)
        out += items


_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)


# Up to this many items, plain-int arithmetic over a column beats numpy's per-call cost.
_SMALL_COLUMN = 128


@functools.lru_cache(maxsize=_SMALL_COLUMN)
def _varint_masks(count: int) -> tuple:
    """Masks over ``count`` 8-byte words: the continuation bits, their value in a column of
    8-byte varints, the 7-bit groups, and the (keep, move, shift) steps that squeeze each
    word's groups together (7 → 14 → 28 → 56 bits)."""

    def rep(mask: int) -> int:
        return int.from_bytes(mask.to_bytes(8, "little") * count, "little")

    return (
        rep(0x8080808080808080),
        rep(0x0080808080808080),
        rep(0x7F7F7F7F7F7F7F7F),
        [
            (rep(keep), rep(move), shift)
            for keep, move, shift in (
                (0x007F007F007F007F, 0x7F007F007F007F00, 1),
                (0x00003FFF00003FFF, 0x3FFF00003FFF0000, 2),
                (0x000000000FFFFFFF, 0x0FFFFFFF00000000, 4),
            )
        ],
    )


def _longs(data: bytes, pos: int, count: int) -> tuple[list[int], int]:
    """``count`` varint longs.  A short column of 8-byte varints — a TickBatch's ts: a
    microsecond time of this century — is read as one integer and squeezed at once."""
    end = pos + 8 * count
    if count <= _SMALL_COLUMN and end <= len(data):
        continuation, eight_bytes, groups, steps = _varint_masks(count)
        x = int.from_bytes(data[pos:end], "little")
        if x & continuation == eight_bytes:
            x &= groups
            for keep, move, shift in steps:
                x = (x & keep) | ((x & move) >> shift)
            return [(n >> 1) ^ -(n & 1) for n in struct.unpack(f"<{count}Q", x.to_bytes(8 * count, "little"))], end
    return _varying_longs(data, pos, count)


def _varying_longs(data: bytes, pos: int, count: int) -> tuple[list[int], int]:
    """``count`` varint longs of any lengths: split at the bytes below 0x80, shift, add."""
    raw = np.frombuffer(data, np.uint8, min(len(data) - pos, 10 * count), pos)
    ends = np.flatnonzero(raw < 0x80)[:count]
    if len(ends) < count:
        raise ValueError("array of longs beyond the message")
    starts = np.empty(count, np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise ValueError("varint longer than 10 bytes")
    size = int(ends[-1]) + 1
    digit = np.arange(size, dtype=np.int64) - np.repeat(starts, lengths)
    parts = (raw[:size] & 0x7F).astype(np.uint64) << _SHIFTS[digit]
    n = np.add.reduceat(parts, starts)  # the parts' bits do not overlap: add = or
    values = (n >> np.uint64(1)).astype(np.int64) ^ -(n & np.uint64(1)).astype(np.int64)
    return values.tolist(), pos + size


def _optional_doubles(data: bytes, pos: int, count: int) -> tuple[list, int]:
    """``count`` items of the union [null, double]: 9-byte strides when none is null."""
    end = pos + 9 * count
    if end <= len(data):
        if count <= _SMALL_COLUMN:
            if data[pos:end:9] == b"\x02" * count:
                return list(struct.unpack_from("<" + "xd" * count, data, pos)), end
        elif (np.ndarray((count,), np.uint8, data, pos, (9,)) == 2).all():
            return np.ndarray((count,), "<f8", data, pos + 1, (9,)).tolist(), end
    out: list[float | None] = []
    for _ in range(count):
        value, pos = _optional_double(data, pos)
        out.append(value)
    if pos > len(data):
        raise ValueError("array of doubles beyond the message")
    return out, pos


def read_trade(data: bytes, pos: int) -> tuple[str, str, int, float | None, float | None]:
    """(event_id, symbol, ts, price, size) of a ``tick.v1`` body starting at ``pos``."""
    event_id, pos = read_string(data, pos)
    symbol, pos = read_string(data, pos)
    ts, pos = read_long(data, pos)
    source, pos = read_string(data, pos)
    check_length("source", source)  # as fastavro's path checks every string
    _, pos = read_long(data, pos)  # seq
    price, pos = _optional_double(data, pos)
    size, pos = _optional_double(data, pos)
    return event_id, symbol, ts, price, size


_DOUBLE = struct.Struct("<d")


def _optional_double(data: bytes, pos: int) -> tuple[float | None, int]:
    """One item of the union [null, double]."""
    b = data[pos]
    if b == 2:
        return _DOUBLE.unpack_from(data, pos + 1)[0], pos + 9
    if b == 0:
        return None, pos + 1
    raise ValueError(f"union branch byte {b}")


def read_trade_columns(data: bytes, pos: int) -> tuple[str, str, list, list, list]:
    """(event_id, symbol, ts, price, size) of a ``tick_batch.v1`` body starting at ``pos``."""
    event_id, pos = read_string(data, pos)
    symbol, pos = read_string(data, pos)
    _, pos = read_long(data, pos)  # ts
    _, pos = read_string(data, pos)  # source
    ts, pos = _blocks(data, pos, _longs)
    price, pos = _blocks(data, pos, _optional_doubles)
    size, pos = _blocks(data, pos, _optional_doubles)
    if not len(ts) == len(price) == len(size):
        raise ValueError(f"columns of different lengths ({len(ts)}, {len(price)}, {len(size)})")
    return event_id, symbol, ts, price, size


def to_json(record: dict) -> str:
    """One JSON line for a decoded record (bytes as hex), stable key order."""
    return json.dumps(record, sort_keys=True, default=lambda o: o.hex() if isinstance(o, bytes) else str(o))


def backward_incompatibilities(old: dict, new: dict, samples: int = 200) -> list[str]:
    """Why a reader with schema ``new`` cannot read data written with ``old`` ([] = it can).

    Checks Avro schema resolution on generated records of the old schema, which covers
    the usual breakages: a new field without a default, a changed type, a removed
    enum symbol, a renamed record.
    """
    from fastavro.utils import generate_many

    old_parsed = fastavro.parse_schema(copy.deepcopy(old))
    new_parsed = fastavro.parse_schema(copy.deepcopy(new))
    problems = []
    for record in generate_many(old_parsed, samples):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, old_parsed, record)
        buf.seek(0)
        try:
            fastavro.schemaless_reader(buf, old_parsed, new_parsed)
        except Exception as e:  # fastavro's SchemaResolutionError and friends
            problems.append(f"{type(e).__name__}: {e}")
            break
    return problems

"""Serde round trips in both wire formats, and schema evolution rules."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import fastavro
import pytest

from ticktape.avro_compiled import Unsupported
from ticktape.serde import SCHEMA_DIR, SINGLE_OBJECT_MAGIC, Serde, SerdeError, backward_incompatibilities, catalog

TICK = {
    "event_id": "sim:AAPL:7",
    "symbol": "AAPL",
    "ts": 1_795_183_200_123_456,
    "source": "sim",
    "seq": 7,
    "price": 190.25,
    "size": 300.0,
    "bid": 190.24,
    "ask": 190.26,
    "bid_size": 500.0,
    "ask_size": 800.0,
}


def test_every_event_type_has_a_schema():
    assert catalog().event_types == [
        "bar",
        "equity",
        "fill",
        "heartbeat",
        "indicator_set",
        "mark",
        "order",
        "order_rejected",
        "position",
        "prediction",
        "progress",
        "risk_control",
        "risk_state",
        "signal",
        "tick",
        "tick_batch",
    ]


@pytest.mark.parametrize("event_type", catalog().event_types)
def test_round_trip_of_generated_records(event_type):
    from fastavro.utils import generate_many

    serde = Serde()
    sv = catalog().latest(event_type)
    for record in generate_many(sv.parsed, 50):
        data = serde.encode(event_type, record)
        assert data[:2] == SINGLE_OBJECT_MAGIC and data[2:10] == sv.fingerprint
        assert serde.decode(data) == (event_type, record)


def _fastavro_body(sv, record) -> bytes:
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, sv.parsed, record)
    return buf.getvalue()


def _variants(record: dict):
    """The record, and the same facts in types the compiled writer leaves to fastavro."""
    yield record
    for name, v in record.items():
        if type(v) is float and v == int(v) and abs(v) < 2**53:
            yield {**record, name: int(v)}  # an int for a double: fastavro writes float(v)
        if type(v) is str:
            yield {**record, name: v + "é\u4e2d"}  # not ASCII: compiled, still fastavro's bytes
        if type(v) is int:
            yield {**record, name: -v}
        if type(v) in (dict, list) and v:
            yield {**record, name: type(v)()}  # empty map or array


@pytest.mark.parametrize("sv", [v for vs in catalog().versions.values() for v in vs], ids=lambda v: v.path.name)
def test_compiled_writers_write_fastavros_bytes(sv):
    """Every schema version has a compiled writer; on generated records it writes what
    fastavro writes, and a record it does not take (an int where a double goes) is
    written by fastavro, still the same bytes."""
    from fastavro.utils import generate_many

    assert sv.write is not None
    compiled = 0
    for record in generate_many(sv.parsed, 40):
        for variant in _variants(record):
            out = bytearray()
            try:
                want = _fastavro_body(sv, variant)
            except (ValueError, TypeError, OverflowError):  # not a valid record (a changed enum symbol)
                with pytest.raises((Unsupported, KeyError)):
                    sv.write(variant, out)
                continue
            try:
                sv.write(variant, out)
            except (Unsupported, KeyError):
                pass  # fastavro's to write
            else:
                compiled += 1
                assert bytes(out) == want, variant
            if sv is catalog().latest(sv.event_type):
                assert Serde().encode(sv.event_type, variant)[10:] == want
    assert compiled >= 40


@pytest.mark.parametrize("sv", [v for vs in catalog().versions.values() for v in vs], ids=lambda v: v.path.name)
def test_compiled_readers_read_what_fastavro_reads(sv):
    """On generated records, and on every cut and many one-byte changes of them: the same
    record (same key order) where fastavro reads one, an error where it fails."""
    import io
    import random

    from fastavro.utils import generate_many

    rng = random.Random(sv.path.name)

    def theirs(body: bytes):
        try:
            return fastavro.schemaless_reader(io.BytesIO(body), sv.parsed)
        except Exception:  # noqa: BLE001  # fastavro raises many types on corrupt bodies
            return "error"

    def ours(body: bytes):
        try:
            record, end = sv.read(body, 0)
        except (IndexError, ValueError, UnicodeDecodeError):
            return "error"
        return record

    assert sv.read is not None
    for record in generate_many(sv.parsed, 30):
        body = _fastavro_body(sv, record)
        got = ours(body)
        assert got == record and list(got) == list(record)
        assert sv.read(body, 0)[1] == len(body)
        for cut in range(len(body)):
            assert ours(body[:cut]) == "error" or repr(theirs(body[:cut])) == repr(ours(body[:cut]))
        for _ in range(20):
            changed = bytearray(body)
            changed[rng.randrange(len(body))] = rng.randrange(256)
            got = ours(bytes(changed))  # as strict as fastavro at least (a 10-byte varint at most)
            assert got == "error" or repr(got) == repr(theirs(bytes(changed)))  # repr: nan is nan


def test_a_record_the_compiled_writer_refuses_gets_fastavros_error_or_bytes():
    serde = Serde()
    missing = {k: v for k, v in TICK.items() if k != "bid"}  # a field with a default
    assert serde.encode("tick", missing) == serde.encode("tick", {**TICK, "bid": None})
    with pytest.raises(SerdeError, match="cannot encode tick"):
        serde.encode("tick", {**TICK, "seq": 2**63})  # beyond a long
    with pytest.raises(SerdeError, match="cannot encode tick"):
        serde.encode("tick", {k: v for k, v in TICK.items() if k != "symbol"})  # no default


def test_tick_round_trip_keeps_microsecond_ints_and_is_readable_by_plain_avro():
    data = Serde().encode("tick", TICK)
    assert Serde().decode(data) == ("tick", TICK)
    # any Avro reader holding schemas/ decodes it: the body after the 10-byte header is plain Avro
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "tick.v1.avsc").read_text()))
    import io

    plain = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema)
    assert plain["symbol"] == "AAPL" and plain["ts"].timestamp() == pytest.approx(1_795_183_200.123456)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty message"),
        (b'{"json": 1}', "not an Avro event"),
        (SINGLE_OBJECT_MAGIC + b"\x00" * 8 + b"\x02", "unknown schema fingerprint"),
        (Serde().encode("tick", TICK)[:14], "corrupt tick body"),
        (b"\x00\x00\x00\x00\x01abc", "SCHEMA_REGISTRY_URL is not set"),
    ],
)
def test_bad_messages_give_clear_errors(data, message):
    with pytest.raises(SerdeError, match=message):
        Serde().decode(data)


def test_encoding_a_bad_record_names_the_event_type():
    with pytest.raises(SerdeError, match="cannot encode tick"):
        Serde().encode("tick", {**TICK, "price": "expensive"})


def test_published_schema_versions_never_change():
    pinned = json.loads((SCHEMA_DIR / "fingerprints.json").read_text())
    actual = {sv.path.name: sv.fingerprint.hex() for vs in catalog().versions.values() for sv in vs}
    assert actual == pinned, "a published schema changed: add a new version instead (schemas/README.md)"


def test_each_version_reads_what_the_previous_version_wrote():
    for versions in catalog().versions.values():
        for old, new in zip(versions, versions[1:]):
            assert backward_incompatibilities(old.schema, new.schema) == [], f"{new.path.name}"


def test_compatibility_check_catches_breaking_changes():
    base = catalog().latest("tick").schema
    added_with_default = copy.deepcopy(base)
    added_with_default["fields"].append({"name": "venue", "type": "string", "default": ""})
    assert backward_incompatibilities(base, added_with_default) == []

    added_without_default = copy.deepcopy(base)
    added_without_default["fields"].append({"name": "venue", "type": "string"})
    assert backward_incompatibilities(base, added_without_default)

    narrowed = copy.deepcopy(base)
    next(f for f in narrowed["fields"] if f["name"] == "seq")["type"] = "int"
    assert backward_incompatibilities(base, narrowed)

    side = catalog().latest("order").schema
    fewer_symbols = copy.deepcopy(side)
    next(f for f in fewer_symbols["fields"] if f["name"] == "side")["type"]["symbols"] = ["BUY"]
    assert backward_incompatibilities(side, fewer_symbols)


class _Registry(BaseHTTPRequestHandler):
    """The two Schema Registry REST calls the codecs use, backed by a dict."""

    schemas: dict[int, str] = {}
    subjects: dict[str, list[int]] = {}

    def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        subject = self.path.split("/")[2]
        schema = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["schema"]
        ids = [i for i, s in self.schemas.items() if s == schema]
        sid = ids[0] if ids else len(self.schemas) + 1
        self.schemas[sid] = schema
        self.subjects.setdefault(subject, []).append(sid)
        self._reply(200, {"id": sid})

    def do_GET(self):
        sid = int(self.path.rsplit("/", 1)[1])
        if sid in self.schemas:
            self._reply(200, {"schema": self.schemas[sid]})
        else:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    server = HTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_confluent_wire_format_with_a_registry(registry):
    serde = Serde(registry)
    data = serde.encode("tick", TICK, topic="md.ticks")
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == 1
    assert _Registry.subjects["md.ticks-value"] == [1]
    # a fresh reader resolves the id through the registry
    assert Serde(registry).decode(data) == ("tick", TICK)
    with pytest.raises(SerdeError, match="a topic is needed"):
        serde.encode("tick", TICK)
    with pytest.raises(SerdeError, match="HTTP 404"):
        Serde(registry).decode(b"\x00" + (999).to_bytes(4, "big") + b"\x00")

"""Avro writers and readers compiled from a schema: Python functions per record schema.

fastavro's ``schemaless_writer`` walks the parsed schema for every record it writes: 28 µs
for an IndicatorSet (thirty fields), about a tenth of what a stage spends on a bar.  A
function generated once per schema writes the same bytes in a third of that.  It takes
only what it is sure of: exact Python types (``str``, ``int``, ``float``, ``None``, ``dict``,
``list``), every field present.  Anything else (a datetime for a timestamp, an int for a
double, a missing field with a default, a value out of range) raises ``Unsupported`` and
the caller writes that record with fastavro, which also gives a bad record its error, so
the output is fastavro's byte for byte (``tests/test_serde.py`` checks it on generated
records of every schema).  Schemas with other shapes (unions other than ``[null, T]``,
fixed, floats, bytes, booleans) get no compiled writer (``compile_writer`` returns None).

A compiled reader (``compile_reader``) reads a body written with its own schema into the
dict fastavro gives (same keys in the same order), in less than half the time; a corrupt
body raises IndexError, ValueError or UnicodeDecodeError.  The tests check it against
fastavro on generated records, every cut of them and one-byte changes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

_DOUBLE = struct.Struct("<d").pack
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


class Unsupported(Exception):
    """A value the compiled writer does not take: write the record with fastavro."""


def _varint(out: bytearray, n: int) -> None:
    """Avro's zig-zag varint of ``n`` (a long already range-checked)."""
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _long(out: bytearray, v: Any, low: int = _LONG_MIN, high: int = _LONG_MAX) -> None:
    if type(v) is not int or not low <= v <= high:
        raise Unsupported
    _varint(out, v)


def _string(out: bytearray, v: Any) -> None:
    if type(v) is not str:
        raise Unsupported
    b = v.encode()
    _varint(out, len(b))
    out += b


class _Generator:
    """Lines of one generated function and the names they use; ``emit`` (a subclass's)
    adds the lines of one schema."""

    names: dict[str, Any] = {}

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names = dict(self.names)
        self._n = 0

    def var(self) -> str:
        self._n += 1
        return f"v{self._n}"

    def emit(self, schema: Any, name: str, indent: str) -> None:
        """Lines for one value ``name`` of ``schema``: a union [null, T] (the only one
        compiled) to ``emit_optional``, a type to ``emit_type``."""
        if isinstance(schema, list):
            if len(schema) != 2 or schema[0] != "null" or schema[1] == "null":
                raise Unsupported(f"union {schema}")
            self.emit_optional(schema[1], name, indent)
            return
        kind = schema["type"] if isinstance(schema, dict) else schema
        if isinstance(kind, (dict, list)):
            self.emit(kind, name, indent)
        else:
            self.emit_type(kind, schema, name, indent)

    def emit_optional(self, schema: Any, name: str, indent: str) -> None:
        raise NotImplementedError

    def emit_type(self, kind: str, schema: Any, name: str, indent: str) -> None:
        raise NotImplementedError

    def function(self, parsed: dict, head: str, name: str, tail: str = "") -> Any:
        """The function ``head`` (a ``def`` line) whose body is ``emit(parsed, name)``, or
        None for a schema of a shape it does not compile."""
        try:
            self.emit(parsed, name, "    ")
        except Unsupported:
            return None
        source = head + "\n" + "\n".join(self.lines) + "\n" + tail
        namespace = dict(self.names)
        exec(compile(source, f"<avro {parsed.get('name')}>", "exec"), namespace)  # noqa: S102  # generated above
        return namespace[head.split()[1].split("(")[0]]


class _WriterGenerator(_Generator):
    """Generates the body of ``write(r, out)`` for one record schema."""

    names = {
        "_varint": _varint,
        "_long": _long,
        "_string": _string,
        "_DOUBLE": _DOUBLE,
        "Unsupported": Unsupported,
        "_INT_MIN": _INT_MIN,
        "_INT_MAX": _INT_MAX,
    }

    def emit_optional(self, schema: Any, value: str, indent: str) -> None:
        add = self.lines.append
        add(f"{indent}if {value} is None:")
        add(f"{indent}    out.append(0)")
        add(f"{indent}else:")
        add(f"{indent}    out.append(2)")
        self.emit(schema, value, indent + "    ")

    def emit_type(self, kind: str, schema: Any, value: str, indent: str) -> None:
        """Lines that write ``value`` (a local name) as ``schema``."""
        add = self.lines.append
        if kind == "null":
            add(f"{indent}if {value} is not None: raise Unsupported")
        elif kind == "long":
            add(f"{indent}_long(out, {value})")
        elif kind == "int":
            add(f"{indent}_long(out, {value}, _INT_MIN, _INT_MAX)")
        elif kind == "double":
            add(f"{indent}if type({value}) is not float: raise Unsupported")
            add(f"{indent}out += _DOUBLE({value})")
        elif kind == "string":
            add(f"{indent}_string(out, {value})")
        elif kind == "enum":
            index = self.var()
            self.names[index] = {s: i for i, s in enumerate(schema["symbols"])}
            add(f"{indent}if type({value}) is not str or {value} not in {index}: raise Unsupported")
            add(f"{indent}_varint(out, {index}[{value}])")
        elif kind in ("array", "map"):
            item, key = self.var(), self.var()
            pytype = "list" if kind == "array" else "dict"
            add(f"{indent}if type({value}) is not {pytype}: raise Unsupported")
            add(f"{indent}if {value}:")
            add(f"{indent}    _varint(out, len({value}))")
            if kind == "array":
                add(f"{indent}    for {item} in {value}:")
                self.emit(schema["items"], item, indent + "        ")
            else:
                add(f"{indent}    for {key}, {item} in {value}.items():")
                add(f"{indent}        _string(out, {key})")
                self.emit(schema["values"], item, indent + "        ")
            add(f"{indent}out.append(0)")
        elif kind == "record":
            add(f"{indent}if type({value}) is not dict: raise Unsupported")
            for field in schema["fields"]:
                v = self.var()
                add(f"{indent}{v} = {value}[{field['name']!r}]")
                self.emit(field["type"], v, indent)
        else:
            raise Unsupported(f"type {kind}")


def compile_writer(parsed: dict) -> Callable[[dict, bytearray], None] | None:
    """``write(record, out)`` appending ``record``'s Avro body to ``out`` (raising
    ``Unsupported``, KeyError or UnicodeEncodeError where fastavro must write it), or
    None for a schema of a shape it does not compile.  ``parsed``: fastavro's parsed
    schema (named types expanded where first used, as ``parse_schema`` leaves them)."""
    return _WriterGenerator().function(parsed, "def write(r, out):", "r")


# -- readers ----------------------------------------------------------------------------
def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Avro's zig-zag varint long at ``pos`` and where it ends (64 bits, as fastavro)."""
    b = data[pos]
    if b < 0x80:  # most longs of an event: one byte
        return (b >> 1) ^ -(b & 1), pos + 1
    n, shift = b & 0x7F, 7
    while True:
        pos += 1
        b = data[pos]
        n |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
    n &= 0xFFFFFFFFFFFFFFFF  # 64 bits, as fastavro's C reader keeps
    return (n >> 1) ^ -(n & 1), pos + 1


def read_string(data: bytes, pos: int) -> tuple[str, int]:
    """Avro's string at ``pos`` (its byte length, then UTF-8) and where it ends."""
    n, pos = read_long(data, pos)
    end = pos + n
    if n < 0 or end > len(data):
        raise ValueError(f"string of {n} bytes beyond the message")
    return data[pos:end].decode(), end


_UNPACK_DOUBLE = struct.Struct("<d").unpack_from


def _least_size(schema: Any) -> int:
    """The fewest bytes a value of ``schema`` takes."""
    if isinstance(schema, list):
        return 1  # the branch
    kind = schema["type"] if isinstance(schema, dict) else schema
    if isinstance(kind, (dict, list)):
        return _least_size(kind)
    if kind == "record":
        return sum(_least_size(f["type"]) for f in schema["fields"])
    return {"null": 0, "double": 8}.get(kind, 1)


class _ReaderGenerator(_Generator):
    """Generates the body of ``read(data, pos)`` for one record schema."""

    names = {"read_long": read_long, "read_string": read_string, "_UNPACK_DOUBLE": _UNPACK_DOUBLE}

    def emit_optional(self, schema: Any, target: str, indent: str) -> None:
        add = self.lines.append
        branch = self.var()
        add(f"{indent}{branch} = data[pos]")
        add(f"{indent}pos += 1")
        add(f"{indent}if {branch} == 0:")
        add(f"{indent}    {target} = None")
        add(f"{indent}elif {branch} == 2:")
        self.emit(schema, target, indent + "    ")
        add(f"{indent}else:")
        add(f"{indent}    raise ValueError(f'union branch byte {{{branch}}}')")

    def emit_type(self, kind: str, schema: Any, target: str, indent: str) -> None:
        """Lines that read one ``schema`` value at ``pos`` into ``target`` and move ``pos``."""
        add = self.lines.append
        if kind == "null":
            add(f"{indent}{target} = None")
        elif kind in ("long", "int"):
            add(f"{indent}{target}, pos = read_long(data, pos)")
        elif kind == "double":
            add(f"{indent}if pos + 8 > len(data): raise ValueError('double beyond the message')")
            add(f"{indent}{target} = _UNPACK_DOUBLE(data, pos)[0]")
            add(f"{indent}pos += 8")
        elif kind == "string":
            add(f"{indent}{target}, pos = read_string(data, pos)")
        elif kind == "enum":
            symbols, index = self.var(), self.var()
            self.names[symbols] = tuple(schema["symbols"])
            add(f"{indent}{index}, pos = read_long(data, pos)")
            add(f"{indent}if not 0 <= {index} < {len(schema['symbols'])}: raise ValueError(f'enum index {{{index}}}')")
            add(f"{indent}{target} = {symbols}[{index}]")
        elif kind in ("array", "map"):
            acc, count, item, key, size = self.var(), self.var(), self.var(), self.var(), self.var()
            add(f"{indent}{acc} = {'[]' if kind == 'array' else '{}'}")
            add(f"{indent}while True:")
            add(f"{indent}    {count}, pos = read_long(data, pos)")
            add(f"{indent}    if {count} == 0: break")
            add(f"{indent}    if {count} < 0:")  # a block with its byte size
            add(f"{indent}        {count} = -{count}")
            add(f"{indent}        {size}, pos = read_long(data, pos)")
            least = _least_size(schema["items"] if kind == "array" else "string")  # a map: its key at least
            if least == 0:
                raise Unsupported("items of no size")  # a corrupt count would loop for ages
            add(f"{indent}    if {count} * {least} > len(data) - pos: raise ValueError('block beyond the message')")
            add(f"{indent}    for _ in range({count}):")
            if kind == "array":
                self.emit(schema["items"], item, indent + "        ")
                add(f"{indent}        {acc}.append({item})")
            else:
                add(f"{indent}        {key}, pos = read_string(data, pos)")
                self.emit(schema["values"], item, indent + "        ")
                add(f"{indent}        {acc}[{key}] = {item}")
            add(f"{indent}{target} = {acc}")
        elif kind == "record":
            names = []
            for field in schema["fields"]:
                v = self.var()
                self.emit(field["type"], v, indent)
                names.append(f"{field['name']!r}: {v}")
            add(f"{indent}{target} = {{{', '.join(names)}}}")
        else:
            raise Unsupported(f"type {kind}")


def compile_reader(parsed: dict) -> Callable[[bytes, int], tuple[dict, int]] | None:
    """``read(data, pos)``: the record written with schema ``parsed`` whose body starts at
    ``pos`` and where it ends, as fastavro's ``schemaless_reader`` reads it with the same
    schema; IndexError, ValueError or UnicodeDecodeError on a corrupt body.  None for a
    schema of a shape it does not compile."""
    return _ReaderGenerator().function(parsed, "def read(data, pos):", "record", "    return record, pos\n")

"""Avro writers compiled from a schema: one Python function per record schema.

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


def _double(out: bytearray, v: Any) -> None:
    if type(v) is not float:
        raise Unsupported
    out += _DOUBLE(v)


class _Compiler:
    """Generates the body of ``write(r, out)`` for one record schema."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {
            "_varint": _varint,
            "_long": _long,
            "_string": _string,
            "_double": _double,
            "_DOUBLE": _DOUBLE,
            "Unsupported": Unsupported,
            "_INT_MIN": _INT_MIN,
            "_INT_MAX": _INT_MAX,
        }
        self._n = 0

    def var(self) -> str:
        self._n += 1
        return f"v{self._n}"

    def emit(self, schema: Any, value: str, indent: str) -> None:
        """Lines that write ``value`` (a local name) as ``schema``."""
        add = self.lines.append
        if isinstance(schema, list):
            if len(schema) != 2 or schema[0] != "null" or schema[1] == "null":
                raise Unsupported(f"union {schema}")
            add(f"{indent}if {value} is None:")
            add(f"{indent}    out.append(0)")
            add(f"{indent}else:")
            add(f"{indent}    out.append(2)")
            self.emit(schema[1], value, indent + "    ")
            return
        kind = schema["type"] if isinstance(schema, dict) else schema
        if isinstance(kind, (dict, list)):
            self.emit(kind, value, indent)
        elif kind == "null":
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
    compiler = _Compiler()
    try:
        compiler.emit(parsed, "r", "    ")
    except Unsupported:
        return None
    source = "def write(r, out):\n" + "\n".join(compiler.lines) + "\n"
    namespace = dict(compiler.names)
    exec(compile(source, f"<avro writer {parsed.get('name')}>", "exec"), namespace)  # noqa: S102  # generated above
    return namespace["write"]

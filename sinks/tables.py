"""Which topic goes to which table, and how a decoded event becomes a row (no I/O).

A table's columns are the Avro fields of its event's latest schema, in schema order;
``timestamp-micros`` fields become aware UTC datetimes; everything else (maps, for
jsonb columns, included) passes through as decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ticktape.kafka_clients import topic_catalog
from ticktape.serde import catalog

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Event type -> table of record.
TABLE_OF_EVENT = {
    "tick": "ticks",
    "bar": "bars",
    "indicator_set": "indicators",
    "prediction": "predictions",
    "signal": "signals",
    "order": "orders",
    "order_rejected": "order_rejections",
    "fill": "fills",
    "position": "positions",
    "equity": "equity",
    "risk_state": "risk_states",
}


def _is_timestamp(avro_type) -> bool:
    """timestamp-micros, alone or as the non-null branch of a union."""
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        return len(branches) == 1 and _is_timestamp(branches[0])
    return isinstance(avro_type, dict) and avro_type.get("logicalType") == "timestamp-micros"


@dataclass(frozen=True)
class Table:
    name: str
    event: str
    columns: tuple[str, ...]
    time_columns: tuple[int, ...]  # indexes of timestamp columns

    def row(self, record: dict) -> tuple:
        """The table row of a decoded event (KeyError when a field is missing)."""
        values = [record[c] for c in self.columns]
        for i in self.time_columns:
            if values[i] is not None:
                values[i] = EPOCH + timedelta(microseconds=values[i])
        return tuple(values)


def _table(event: str) -> Table:
    fields = catalog().latest(event).schema["fields"]
    return Table(
        TABLE_OF_EVENT[event],
        event,
        tuple(f["name"] for f in fields),
        tuple(i for i, f in enumerate(fields) if _is_timestamp(f["type"])),
    )


TABLES: dict[str, Table] = {event: _table(event) for event in TABLE_OF_EVENT}


def topics_of_record() -> list[str]:
    """Catalog topics whose events have a table (late ticks are counted, not stored)."""
    return [
        name for name, spec in topic_catalog().items() if spec.event in TABLE_OF_EVENT and not name.endswith(".late")
    ]


def expected_event(topic_name: str) -> str | None:
    """The event type a catalog topic carries (name without the run prefix)."""
    spec = topic_catalog().get(topic_name)
    return spec.event if spec else None

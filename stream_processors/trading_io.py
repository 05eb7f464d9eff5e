"""What the four trading agents share: input read through ``InputGuard`` (each input
partition once, in offset order, from the next offset kept in the stage's table),
decoding with dead letters, sending events, and a table whose entries carry their
changelog partition (as in the bars stage), saved with ``save_state``.

Not a stage (it is not in ``STAGES``): strategy, risk, execution and portfolio import it.
"""

from __future__ import annotations

import asyncio
import logging

import faust
from prometheus_client import Counter

from ticktape import deadletter, kafka_clients, metrics
from ticktape.config import Settings
from ticktape.core.desks import account_partition
from ticktape.serde import Serde, SerdeError
from ticktape.validate import Validator

from .app import InputGuard, save_state

log = logging.getLogger(__name__)
PARTITION_HEADER = "ticktape.partition"  # a symbol's partition number on symbol-keyed topics
LATE_HEADER = "ticktape.late"  # on a ledger Fill: applied where it arrived, not in canonical order
DLQ = "dlq.trading"


class TradingIO:
    def __init__(self, app: faust.App, s: Settings, stage: str):
        self.app, self.s, self.stage = app, s, stage
        self.serde = Serde(s.schema_registry_url)
        self.validator = Validator(s)
        self.dlq_topic = s.topic(DLQ)
        self.account_partitions = kafka_clients.topic_spec("trading.account").partitions
        self._dlq = metrics.DLQ_MESSAGES.labels(stage, DLQ)
        self._in: dict[str, Counter] = {}
        self._out: dict[str, Counter] = {}
        self.deliveries: list = []
        self.guard = InputGuard(s)
        self._runs: list = []  # this batch's input runs, whose next offsets ``flush`` saves

    def forget(self, partitions) -> None:
        self.guard.forget(partitions)

    def account_partition(self, account: str) -> int:
        return account_partition(account, self.account_partitions)

    async def inputs(self, table, events, topics) -> list:
        """The batch's messages of the input partitions this worker still owns (the others'
        new owners process them), per partition in offset order, holes re-read, repeats
        dropped."""
        assigned = {(tp.topic, tp.partition) for tp in self.app.consumer.assignment() if tp.topic in topics}
        self._runs = await self.guard.runs(
            table, [ev.message for ev in events if (ev.message.topic, ev.message.partition) in assigned]
        )
        return [msg for _, _, records in self._runs for msg in records]

    async def decode(self, msg, expected: tuple[str, ...]) -> tuple[str, dict] | None:
        """(event type, record), or None after sending the message to the dead-letter topic."""
        topic = msg.topic[len(self.s.topic_prefix) :]
        counter = self._in.get(topic) or self._in.setdefault(topic, metrics.EVENTS_IN.labels(self.stage, topic))
        counter.inc()
        try:
            event_type, record = self.serde.decode(msg.value)
            if event_type not in expected:
                raise SerdeError(f"expected {' or '.join(expected)} on {topic}, got a {event_type}")
            self.validator.check(event_type, record)
        except SerdeError as e:
            await self.dead_letter(msg, str(e))
            return None
        return event_type, record

    async def dead_letter(self, msg, error: str) -> None:
        log.warning("%s: dead letter from %s[%s]@%s: %s", self.stage, msg.topic, msg.partition, msg.offset, error)
        self._dlq.inc()
        dl = deadletter.of_message(msg, error, stage=self.stage, max_bytes=self.s.dlq_max_bytes)
        self.deliveries.append(
            await self.app.producer.send(self.dlq_topic, dl.key, dl.value, None, msg.timestamp, dl.headers)
        )

    async def send(
        self, topic: str, event_type: str, record: dict, key: str, partition: int, headers: list | None = None
    ) -> None:
        name = self.s.topic(topic)
        value = self.serde.encode(event_type, record, topic=name)
        self.deliveries.append(
            await self.app.producer.send(name, key.encode(), value, partition, record["ts"] / 1e6, headers)
        )
        counter = self._out.get(topic) or self._out.setdefault(topic, metrics.EVENTS_OUT.labels(self.stage, topic))
        counter.inc()

    async def flush(self, table, changes: dict) -> None:
        """Wait for the batch's events, then write ``{key: (partition, value or None)}``
        (None deletes) and the inputs' next offsets to the table and its changelog, and
        wait for that too."""
        deliveries, self.deliveries = self.deliveries, []
        await asyncio.gather(*deliveries)
        await save_state(
            table,
            [(partition, key, value) for key, (partition, value) in changes.items()]
            + self.guard.offset_entries(self._runs),
        )


def partition_header(partition: int) -> list[tuple[str, bytes]]:
    return [(PARTITION_HEADER, str(partition).encode())]


def header(msg, name: str) -> bytes | None:
    headers = msg.headers or ()
    for k, v in headers.items() if isinstance(headers, dict) else headers:
        if k == name:
            return v
    return None


def header_partition(msg) -> int | None:
    v = header(msg, PARTITION_HEADER)
    return None if v is None else int(v)

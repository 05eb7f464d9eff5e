"""The indicators stage: md.bars.<interval> → analytics.indicators (+ dlq.indicators).

Each closed bar is folded into its symbol's ``SymbolIndicators`` (``ticktape.core.
indicators``: the built-in 20, O(1) per bar, and the user indicators of ``INDICATORS``,
their outputs in the set's ``extra``) kept in the ``indicators`` table under the key
``<interval>:<symbol>`` and written to the changelog after each batch, so a restarted
worker resumes exactly.  A user indicator's defect (``IndicatorError``) stops the worker
before that batch's state is saved: fixed and restarted, it resumes from that state.
A redelivered bar (window start not after the last one folded) is skipped; a bar that
cannot be decoded or folded goes to dlq.indicators.  The table
also holds each input partition's next offset (key ``@offset:<topic>:<partition>``) for
``InputGuard``, which hands over a gap-free run of messages from it.  Per batch,
as in the bars stage: send the indicator sets and dead letters and wait for the broker,
then the changelog, then ack.  Outputs go to their input's partition number.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import cast

import faust

from ticktape import deadletter, kafka_clients, metrics
from ticktape.config import Settings
from ticktape.api import load_indicators
from ticktape.core.indicators import BarError, SymbolIndicators, indicator_event
from ticktape.core.intervals import interval_seconds
from ticktape.serde import Serde, SerdeError
from ticktape.validate import Validator

from .app import InputGuard, run_stage, save_state

STAGE = "indicators"


class IndicatorsStage:
    def __init__(self, app: faust.App, s: Settings, table):
        self.app = app
        self.table = table
        self.serde = Serde(s.schema_registry_url)
        self.validator = Validator(s)
        self.grace_s = s.bar_grace_ms / 1000
        self.sources = [s.topic(f"md.bars.{iv}") for iv in s.interval_list]
        self.out_topic = s.topic("analytics.indicators")
        self.dlq_topic = s.topic("dlq.indicators")
        self.user = [spec.cls for spec in load_indicators(s)]
        self._states: dict[int, dict[str, SymbolIndicators]] = defaultdict(dict)
        self.guard = InputGuard(s)
        self._in = {
            full: metrics.EVENTS_IN.labels(STAGE, f"md.bars.{iv}") for full, iv in zip(self.sources, s.interval_list)
        }
        self._out = metrics.EVENTS_OUT.labels(STAGE, "analytics.indicators")
        self._dlq = metrics.DLQ_MESSAGES.labels(STAGE, "dlq.indicators")
        self.dlq_max_bytes = s.dlq_max_bytes
        self._latency = metrics.EVENT_LATENCY.labels(STAGE)

    # -- state ---------------------------------------------------------------------
    def forget(self, partitions) -> None:
        """Drop cached states (after a rebalance the table is the truth)."""
        for p in partitions:
            self._states.pop(p, None)
        self.guard.forget(partitions)

    def state(self, partition: int, key: str, interval: str) -> SymbolIndicators:
        states = self._states[partition]
        st = states.get(key)
        if st is None:
            saved = self.table.data.get(key)
            st = states[key] = (
                SymbolIndicators.from_state(saved, self.user) if saved else SymbolIndicators(interval, self.user)
            )
        return st

    # -- processing ------------------------------------------------------------------
    async def process(self, events) -> None:
        assigned = {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}
        messages = [
            ev.message for ev in events if (ev.message.topic, ev.message.partition) in assigned
        ]  # else its new owner processes it
        send = self.app.producer.send
        deliveries, dirty = [], {}
        now = time.time()
        runs = await self.guard.runs(self.table, messages)
        for topic, partition, records in runs:
            self._in[topic].inc(len(records))  # each input record once, however often it came
            for msg in records:
                try:
                    event_type, bar = self.serde.decode(cast(bytes, msg.value))  # None: SerdeError("empty message")
                    if event_type != "bar":
                        raise SerdeError(f"expected a bar, got a {event_type}")
                    self.validator.check(event_type, bar)  # a far-future bar would stop its symbol
                    try:
                        interval_seconds(bar["interval"])
                    except ValueError as e:
                        raise BarError(str(e)) from None
                    key = f"{bar['interval']}:{bar['symbol']}"
                    st = self.state(partition, key, bar["interval"])
                    folded = st.update(bar)
                except (
                    SerdeError,
                    BarError,
                ) as e:  # the bar's fault; a saved state this code cannot read stops the worker
                    self._dlq.inc()
                    dl = deadletter.of_message(msg, str(e), stage=STAGE, max_bytes=self.dlq_max_bytes)
                    deliveries.append(await send(self.dlq_topic, dl.key, dl.value, None, msg.timestamp, dl.headers))
                    continue
                if folded is None:
                    continue  # redelivered: folded before
                dirty[key] = (partition, st)
                value = self.serde.encode("indicator_set", indicator_event(bar, *folded), topic=self.out_topic)
                deliveries.append(
                    await send(self.out_topic, bar["symbol"].encode(), value, partition, bar["window_end"] / 1e6, None)
                )
                self._out.inc()
                self._latency.observe(now - bar["window_end"] / 1e6 - self.grace_s)
        await asyncio.gather(*deliveries)
        await save_state(
            self.table,
            [(partition, key, {"p": partition, **st.to_state()}) for key, (partition, st) in dirty.items()]
            + self.guard.offset_entries(runs),
        )


def attach(app: faust.App, s: Settings) -> None:
    partitions = kafka_clients.topic_spec(f"md.bars.{s.interval_list[0]}").partitions
    table = app.Table("indicators", partitions=partitions)
    stage = IndicatorsStage(app, s, table)
    bars = app.topic(*stage.sources, key_serializer="raw", value_serializer="raw")

    run_stage(app, s, stage, bars, name=STAGE)

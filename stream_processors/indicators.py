"""The indicators stage: md.bars.<interval> → analytics.indicators (+ dlq.indicators).

Each closed bar is folded into its symbol's ``SymbolIndicators`` (``ticktape.core.
indicators``: the built-in 20, O(1) per bar, and the user indicators of ``INDICATORS``,
their outputs in the set's ``extra``) kept in the ``indicators`` table under the key
``<interval>:<symbol>`` and written to the changelog after each batch, so a restarted
worker resumes exactly.  A user indicator's defect (``IndicatorError``) stops the worker
before that batch's state is saved: fixed and restarted, it resumes from that state.
A redelivered bar (window start not after the last one folded) is skipped; a bar that
cannot be decoded or folded goes to dlq.indicators.  The table also holds each input
partition's next offset; the runner (``runner.py``) reads from it and sends and saves each
batch.  Outputs go to their input's partition number.
"""

from __future__ import annotations

import time
from collections import defaultdict

import faust

from ticktape import kafka_clients, metrics
from ticktape.config import Settings
from ticktape.api import load_indicators
from ticktape.core.indicators import BarError, SymbolIndicators, indicator_event
from ticktape.core.intervals import interval_seconds

from .runner import Outbox, Stage, run

STAGE = "indicators"


class IndicatorsStage(Stage):
    name = STAGE
    dlq = "dlq.indicators"

    def __init__(self, s: Settings, table):
        super().__init__(s, table)
        self.grace_s = s.bar_grace_ms / 1000
        for iv in s.interval_list:
            self.accept(f"md.bars.{iv}", "bar")
        self.sets = self.sink("analytics.indicators")
        self.user = [spec.cls for spec in load_indicators(s)]
        self._states: dict[int, dict[str, SymbolIndicators]] = defaultdict(dict)
        self._dirty: dict[str, tuple[int, SymbolIndicators]] = {}  # this batch's
        self._latency = metrics.EVENT_LATENCY.labels(STAGE)
        self._now = 0.0  # the batch's wall clock

    # -- state ---------------------------------------------------------------------
    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self._states.pop(p, None)

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
    async def begin(self) -> None:
        self._now = time.time()

    def fold(self, msg, event: tuple[str, dict], out: Outbox) -> None:
        bar = event[1]
        try:
            try:
                interval_seconds(bar["interval"])
            except ValueError as e:
                raise BarError(str(e)) from None
            key = f"{bar['interval']}:{bar['symbol']}"
            st = self.state(msg.partition, key, bar["interval"])
            folded = st.update(bar)
        except BarError as e:  # the bar's fault; a saved state this code cannot read stops the worker
            out.dead_letter(msg, str(e))
            return
        if folded is None:
            return  # redelivered: folded before
        self._dirty[key] = (msg.partition, st)
        out.send(self.sets, "indicator_set", indicator_event(bar, *folded), bar["symbol"], msg.partition)
        self._latency.observe(self._now - bar["window_end"] / 1e6 - self.grace_s)

    async def finish(self, out: Outbox) -> None:
        dirty, self._dirty = self._dirty, {}
        for key, (partition, st) in dirty.items():
            out.changes[key] = (partition, {"p": partition, **st.to_state()})


def attach(app: faust.App, s: Settings) -> None:
    partitions = kafka_clients.topic_spec(f"md.bars.{s.interval_list[0]}").partitions
    run(app, s, IndicatorsStage(s, app.Table("indicators", partitions=partitions)))

"""The paper execution stage: trading.orders + market data (md.ticks, or the strategy
interval's bars with EXEC_MARKET_DATA=bars) → trading.fills, and each Fill also to the
account stream (trading.account) for the risk stage.

One ``ExecutionDesk`` (``ticktape.core.desks``) for the worker's partitions.  Orders are
sent by the risk stage to the partition of their symbol's market data, so a symbol's
orders and prices meet here.  State: the ``execution`` table — per symbol its open
orders (key ``<symbol>``) and per interval window its first prices (key
``<symbol>@<window start>``, one small entry per window, deleted after a day of event
time) and each input partition's next offset (``InputGuard``) — written to the changelog
after each batch.  With EXECUTION_VENUE=alpaca-paper, ``stream_processors/venue.py``
runs instead.
"""

from __future__ import annotations

import faust

from ticktape import kafka_clients, metrics
from ticktape.config import Settings
from ticktape.core.desks import ExecutionDesk
from ticktape.risk_config import exec_config
from ticktape.core.intervals import interval_seconds
from ticktape.core.tickbatch import events_of

from . import venue
from .app import run_stage
from .trading_io import TradingIO

STAGE = "execution"


class ExecutionStage:
    def __init__(self, app: faust.App, s: Settings, table):
        self.io = TradingIO(app, s, STAGE)
        self.guard = self.io.guard  # run_stage reads lost tails through it
        self.table = table
        self.market = (
            s.topic("md.ticks") if s.exec_market_data == "ticks" else s.topic(f"md.bars.{s.strategy_interval}")
        )
        self.orders = s.topic("trading.orders")
        self.sources = {self.market, self.orders}
        self.width = interval_seconds(s.strategy_interval) * 1_000_000
        self.cfg = exec_config(s)
        self.source = s.exec_market_data
        self.desk = ExecutionDesk(self.cfg, self.width, self.source)
        for side in ("BUY", "SELL"):  # at 0 from the start, so rate() sees a first fill
            metrics.FILLS.labels(s.trading_account, side)
        self.loaded: set[int] = set()
        self.partition_of: dict[str, int] = {}

    def forget(self, partitions) -> None:
        self.io.forget(partitions)
        self.loaded -= set(partitions)
        for sym in [k for k, p in self.partition_of.items() if p in partitions]:
            del self.partition_of[sym]
            self.desk.forget_symbol(sym)

    def load(self, partition: int) -> None:
        if partition in self.loaded:
            return
        self.loaded.add(partition)
        windows: dict[str, dict[int, list]] = {}
        for key, value in self.table.data.items():
            if key.startswith("@") or not value or value["p"] != partition:
                continue  # an input offset (InputGuard's), another partition's entry, or a
                # forgotten window an older version wrote as the value null instead of a tombstone
            if "@" in key:
                sym, b = key.rsplit("@", 1)
                windows.setdefault(sym, {})[int(b)] = list(value["m"])
            else:
                self.desk.set_symbol_state(key, value)
                self.partition_of[key] = partition
        for sym, mem in windows.items():
            self.desk.restore_memory(sym, mem)
            self.partition_of.setdefault(sym, partition)

    async def process(self, events) -> None:
        io = self.io
        changes = {}
        dirty = {}
        fills = []
        for msg in await io.inputs(self.table, events, self.sources):
            self.load(msg.partition)
            expected = (
                ("order",)
                if msg.topic == self.orders
                else ("tick", "tick_batch", "heartbeat")
                if self.source == "ticks"
                else ("bar",)
            )
            decoded = await io.decode(msg, expected)
            if decoded is None or decoded[0] == "heartbeat":
                continue  # a heartbeat carries no price
            event_type, rec = decoded
            sym = rec["symbol"]
            self.partition_of[sym] = msg.partition
            if event_type == "order":
                fills += [(f, msg.partition) for f in self.desk.on_order(rec)]
                dirty[sym] = msg.partition
                continue
            for market in events_of(event_type, rec):  # a TickBatch: its ticks, in order
                new, windows = self.desk.on_market("bar" if event_type == "bar" else "tick", market)
                mem = self.desk.memory[sym]
                for b in windows:
                    entry = mem.get(b)
                    changes[f"{sym}@{b}"] = (msg.partition, None if entry is None else {"p": msg.partition, "m": entry})
                if new:
                    fills += [(f, msg.partition) for f in new]
                    dirty[sym] = msg.partition
        for fill, partition in fills:
            await io.send("trading.fills", "fill", fill, fill["symbol"], partition)
            await io.send("trading.account", "fill", fill, fill["account"], io.account_partition(fill["account"]))
            metrics.FILLS.labels(fill["account"], fill["side"]).inc()
        for sym, p in dirty.items():
            changes[sym] = (p, {"p": p, **self.desk.symbol_state(sym)})
        await io.flush(self.table, changes)


def attach(app: faust.App, s: Settings) -> None:
    if s.execution_venue.lower() != "paper":  # orders only: the venue fills them
        orders = app.topic(s.topic("trading.orders"), key_serializer="raw", value_serializer="raw")
        venue_table = app.Table(STAGE, partitions=kafka_clients.topic_spec("trading.orders").partitions)
        venue.attach(app, s, venue_table, orders, STAGE)
        return
    stage_topics = [
        s.topic("trading.orders"),
        s.topic("md.ticks") if s.exec_market_data == "ticks" else s.topic(f"md.bars.{s.strategy_interval}"),
    ]
    topic = app.topic(*stage_topics, key_serializer="raw", value_serializer="raw")
    table = app.Table(STAGE, partitions=kafka_clients.topic_spec("trading.orders").partitions)
    stage = ExecutionStage(app, s, table)

    run_stage(app, s, stage, topic, name=STAGE)

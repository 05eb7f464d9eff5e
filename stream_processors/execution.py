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
from ticktape.core.desks import ExecutionDesk, account_partition
from ticktape.risk_config import exec_config
from ticktape.core.intervals import interval_seconds
from ticktape.core.tickbatch import events_of

from . import venue
from .runner import DLQ, Outbox, Stage, forget_symbols, run

STAGE = "execution"


class ExecutionStage(Stage):
    checkpoint_each_batch = True  # a trading desk: see the runner module doc
    name = STAGE
    dlq = DLQ

    def __init__(self, s: Settings, table):
        super().__init__(s, table)
        self.accept("trading.orders", "order")
        if s.exec_market_data == "ticks":
            self.accept("md.ticks", "tick", "tick_batch", "heartbeat")
        else:
            self.accept(f"md.bars.{s.strategy_interval}", "bar")
        self.fills = self.sink("trading.fills")
        self.account_stream = self.sink("trading.account")
        self.account_partitions = kafka_clients.topic_spec("trading.account").partitions
        self.width = interval_seconds(s.strategy_interval) * 1_000_000
        self.desk = ExecutionDesk(exec_config(s), self.width, s.exec_market_data)
        for side in ("BUY", "SELL"):  # at 0 from the start, so rate() sees a first fill
            metrics.FILLS.labels(s.trading_account, side)
        self.loaded: set[int] = set()
        self.partition_of: dict[str, int] = {}
        self._dirty: dict[str, int] = {}  # this batch's symbols with changed orders -> partition
        self._fills: list[tuple[dict, int]] = []  # this batch's

    def forget(self, partitions: set[int]) -> None:
        self.loaded -= partitions
        for sym in forget_symbols(self.partition_of, partitions):
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

    def fold(self, msg, event: tuple[str, dict], out: Outbox) -> None:
        self.load(msg.partition)
        event_type, rec = event
        if event_type == "heartbeat":
            return  # a heartbeat carries no price
        sym = rec["symbol"]
        self.partition_of[sym] = msg.partition
        if event_type == "order":
            self._fills += [(f, msg.partition) for f in self.desk.on_order(rec)]
            self._dirty[sym] = msg.partition
            return
        for market in events_of(event_type, rec):  # a TickBatch: its ticks, in order
            new, windows = self.desk.on_market("bar" if event_type == "bar" else "tick", market)
            mem = self.desk.memory[sym]
            for b in windows:
                entry = mem.get(b)
                out.changes[f"{sym}@{b}"] = (msg.partition, None if entry is None else {"p": msg.partition, "m": entry})
            if new:
                self._fills += [(f, msg.partition) for f in new]
                self._dirty[sym] = msg.partition

    async def finish(self, out: Outbox) -> None:
        fills, dirty = self._fills, self._dirty
        self._fills, self._dirty = [], {}
        for fill, partition in fills:
            account = fill["account"]
            out.send(self.fills, "fill", fill, fill["symbol"], partition)
            out.send(self.account_stream, "fill", fill, account, account_partition(account, self.account_partitions))
            metrics.FILLS.labels(account, fill["side"]).inc()
        for sym, p in dirty.items():
            out.changes[sym] = (p, {"p": p, **self.desk.symbol_state(sym)})


def attach(app: faust.App, s: Settings) -> None:
    table = app.Table(STAGE, partitions=kafka_clients.topic_spec("trading.orders").partitions)
    if s.execution_venue.lower() != "paper":  # orders only: the venue fills them
        venue.attach(app, s, table, STAGE)
    else:
        run(app, s, ExecutionStage(s, table))

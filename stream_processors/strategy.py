"""The strategy stage: ml.predictions → trading.signals, and the account stream
(trading.account) the risk stage orders its decisions by.

State: the ``strategy`` table, one entry per symbol (``StrategyDesk.symbol_state``), with
its partition; written to the changelog after each batch.  Per batch: decide
(``ticktape.core.desks.StrategyDesk``), send each Signal to trading.signals (the
symbol's partition) and to trading.account, each Mark (one per prediction) to trading.account, then one
Progress per symbol whose progress moved; wait for the broker; then the changelog.
Account-stream events carry the symbol's partition in a header so that the risk stage
can send orders to the partition the symbol's market data is in.
"""
from __future__ import annotations

import faust

from ticktape import kafka_clients
from ticktape.config import Settings
from ticktape.core.desks import StrategyDesk
from ticktape.core.strategy import StrategyConfig, check_prediction

from .app import run_stage
from .trading_io import TradingIO, partition_header

STAGE = "strategy"


class StrategyStage:
    def __init__(self, app: faust.App, s: Settings, table):
        self.io = TradingIO(app, s, STAGE)
        self.guard = self.io.guard  # run_stage reads lost tails through it
        self.table = table
        self.cfg = StrategyConfig.from_settings(s)
        self.account = self.cfg.account
        self.sources = {s.topic("ml.predictions")}
        self.desk = StrategyDesk(self.cfg)
        self.partition_of: dict[str, int] = {}  # symbols loaded into the desk
        self.sent_progress: dict[str, int] = {}

    def forget(self, partitions) -> None:
        self.io.forget(partitions)
        for sym in [k for k, p in self.partition_of.items() if p in partitions]:
            del self.partition_of[sym]
            self.desk.forget_symbol(sym)
            self.sent_progress.pop(sym, None)

    def load(self, symbol: str, partition: int) -> None:
        if symbol not in self.partition_of:
            self.partition_of[symbol] = partition
            saved = self.table.data.get(symbol)
            if saved is not None:
                self.desk.set_symbol_state(symbol, saved)

    async def process(self, events) -> None:
        io = self.io
        acct_p = io.account_partition(self.account)
        dirty = {}
        for msg in await io.inputs(self.table, events, self.sources):
            decoded = await io.decode(msg, ("prediction",))
            if decoded is None:
                continue
            _, rec = decoded
            sym = rec["symbol"]
            self.load(sym, msg.partition)
            try:
                if rec["interval"] == self.cfg.interval:  # the desk ignores the other intervals
                    check_prediction(rec)
            except ValueError as e:  # a p_up that is not a probability, no close (Prediction v1)
                await io.dead_letter(msg, str(e))
                continue
            out = self.desk.on_prediction(rec)
            header = partition_header(msg.partition)
            for kind, e in out:
                if kind == "signal":
                    await io.send("trading.signals", "signal", e, sym, msg.partition)
                await io.send("trading.account", kind, e, self.account, acct_p, header)
            dirty[sym] = msg.partition
        for sym, partition in dirty.items():
            progress = self.desk.progress(sym)
            if progress is not None and progress > self.sent_progress.get(sym, -1):
                self.sent_progress[sym] = progress
                await io.send("trading.account", "progress",
                              {"event_id": f"prog:{self.account}:{sym}:{progress}", "account": self.account,
                               "symbol": sym, "ts": progress}, self.account, acct_p, partition_header(partition))
        states = {sym: (p, self.desk.symbol_state(sym)) for sym, p in dirty.items()}
        await io.flush(self.table, {sym: (p, {"p": p, **st}) for sym, (p, st) in states.items() if st})


def attach(app: faust.App, s: Settings) -> None:
    topic = app.topic(s.topic("ml.predictions"), key_serializer="raw", value_serializer="raw")
    table = app.Table(STAGE, partitions=kafka_clients.topic_spec("ml.predictions").partitions)
    stage = StrategyStage(app, s, table)

    run_stage(app, s, stage, topic, name=STAGE)

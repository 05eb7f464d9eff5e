"""The strategy stage: ml.predictions (or analytics.indicators, for a strategy that
trades bars: ``STRATEGY``) → trading.signals, and the account stream (trading.account)
the risk stage orders its decisions by.

State: the ``strategy`` table, one entry per symbol (``StrategyDesk.symbol_state``), with
its partition; written to the changelog after each batch.  Per batch: decide
(``ticktape.core.desks.StrategyDesk``), send each Signal to trading.signals (the
symbol's partition) and to trading.account, each Mark (one per prediction) to trading.account, then one
Progress per symbol whose progress moved; wait for the broker; then the changelog.
Account-stream events carry the symbol's partition in a header so that the risk stage
can send orders to the partition the symbol's market data is in.
"""

from __future__ import annotations

import json
import logging

import faust

from ticktape import kafka_clients, metrics
from ticktape.api import load_strategy, strategy_config
from ticktape.config import Settings
from ticktape.core.desks import StrategyDesk

from .app import run_stage
from .trading_io import TradingIO, partition_header

log = logging.getLogger(__name__)
STAGE = "strategy"
INPUT_TOPICS = {"prediction": "ml.predictions", "indicator_set": "analytics.indicators"}


class StrategyStage:
    def __init__(self, app: faust.App, s: Settings, table, desk: StrategyDesk):
        self.io = TradingIO(app, s, STAGE)
        self.guard = self.io.guard  # run_stage reads lost tails through it
        self.table = table
        self.desk = desk
        self.cfg = desk.cfg
        self.account = self.cfg.account
        self.sources = {s.topic(INPUT_TOPICS[desk.input])}
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
            decoded = await io.decode(msg, (self.desk.input,))
            if decoded is None:
                continue
            kind, rec = decoded
            sym = rec["symbol"]
            self.load(sym, msg.partition)
            try:
                out = self.desk.on_input(kind, rec)
            except ValueError as e:  # e.g. a p_up that is not a probability, no close
                await io.dead_letter(msg, str(e))
                continue
            header = partition_header(msg.partition)
            for kind, ev in out:
                if kind == "signal":
                    await io.send("trading.signals", "signal", ev, sym, msg.partition)
                await io.send("trading.account", kind, ev, self.account, acct_p, header)
            dirty[sym] = msg.partition
        for sym, partition in dirty.items():
            progress = self.desk.progress(sym)
            if progress is not None and progress > self.sent_progress.get(sym, -1):
                self.sent_progress[sym] = progress
                await io.send(
                    "trading.account",
                    "progress",
                    {
                        "event_id": f"prog:{self.account}:{sym}:{progress}",
                        "account": self.account,
                        "symbol": sym,
                        "ts": progress,
                    },
                    self.account,
                    acct_p,
                    partition_header(partition),
                )
        states = {sym: (p, self.desk.symbol_state(sym)) for sym, p in dirty.items()}
        await io.flush(self.table, {sym: (p, {"p": p, **st}) for sym, (p, st) in states.items() if st})


def attach(app: faust.App, s: Settings) -> None:
    spec = load_strategy(s)
    desk = StrategyDesk(strategy_config(s), spec)
    ran = spec.record()
    metrics.STRATEGY.info(
        {
            "class": ran["class"],
            "params": json.dumps(ran["params"], sort_keys=True),
            "source_sha256": ran["source_sha256"],
        }
    )  # what this live run trades
    log.info(
        "strategy %s %s (source sha256 %s), on %s",
        ran["class"],
        json.dumps(ran["params"], sort_keys=True),
        ran["source_sha256"][:16],
        INPUT_TOPICS[desk.input],
    )
    name = INPUT_TOPICS[desk.input]
    topic = app.topic(s.topic(name), key_serializer="raw", value_serializer="raw")
    table = app.Table(STAGE, partitions=kafka_clients.topic_spec(name).partitions)
    stage = StrategyStage(app, s, table, desk)

    run_stage(app, s, stage, topic, name=STAGE)

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
from ticktape.core.desks import StrategyDesk, account_partition

from .runner import DLQ, Outbox, Stage, forget_symbols, partition_header, run

log = logging.getLogger(__name__)
STAGE = "strategy"
INPUT_TOPICS = {"prediction": "ml.predictions", "indicator_set": "analytics.indicators"}


class StrategyStage(Stage):
    checkpoint_each_batch = True  # a trading desk: see the runner module doc
    name = STAGE
    dlq = DLQ

    def __init__(self, s: Settings, table, desk: StrategyDesk):
        super().__init__(s, table)
        self.desk = desk
        self.account = desk.cfg.account
        self.account_p = account_partition(self.account, kafka_clients.topic_spec("trading.account").partitions)
        self.accept(INPUT_TOPICS[desk.input], desk.input)
        self.signals = self.sink("trading.signals")
        self.account_stream = self.sink("trading.account")
        self.partition_of: dict[str, int] = {}  # symbols loaded into the desk
        self.sent_progress: dict[str, int] = {}
        self._dirty: dict[str, int] = {}  # this batch's symbols -> partition

    def forget(self, partitions: set[int]) -> None:
        for sym in forget_symbols(self.partition_of, partitions):
            self.desk.forget_symbol(sym)
            self.sent_progress.pop(sym, None)

    def load(self, symbol: str, partition: int) -> None:
        if symbol not in self.partition_of:
            self.partition_of[symbol] = partition
            saved = self.table.data.get(symbol)
            if saved is not None:
                self.desk.set_symbol_state(symbol, saved)

    def fold(self, msg, event: tuple[str, dict], out: Outbox) -> None:
        kind, rec = event
        sym = rec["symbol"]
        self.load(sym, msg.partition)
        try:
            emitted = self.desk.on_input(kind, rec)
        except ValueError as e:  # e.g. a p_up that is not a probability, no close
            out.dead_letter(msg, str(e))
            return
        header = partition_header(msg.partition)
        for kind, ev in emitted:
            if kind == "signal":
                out.send(self.signals, "signal", ev, sym, msg.partition)
            out.send(self.account_stream, kind, ev, self.account, self.account_p, header)
        self._dirty[sym] = msg.partition

    async def finish(self, out: Outbox) -> None:
        dirty, self._dirty = self._dirty, {}
        for sym, partition in dirty.items():
            progress = self.desk.progress(sym)
            if progress is not None and progress > self.sent_progress.get(sym, -1):
                self.sent_progress[sym] = progress
                out.send(
                    self.account_stream,
                    "progress",
                    {
                        "event_id": f"prog:{self.account}:{sym}:{progress}",
                        "account": self.account,
                        "symbol": sym,
                        "ts": progress,
                    },
                    self.account,
                    self.account_p,
                    partition_header(partition),
                )
        for sym, p in dirty.items():
            st = self.desk.symbol_state(sym)
            if st:
                out.changes[sym] = (p, {"p": p, **st})


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
    table = app.Table(STAGE, partitions=kafka_clients.topic_spec(INPUT_TOPICS[desk.input]).partitions)
    run(app, s, StrategyStage(s, table, desk))

"""The portfolio stage: the ledger (trading.ledger: an account's Fills and Marks in the
risk stage's canonical order) → trading.positions (key ``<account>|<symbol>``,
compacted) and trading.equity (key account).

One ``PortfolioDesk`` per account (``ticktape.core.desks``), kept in the ``portfolio``
table (one entry per account) and written to the changelog after each batch.  Gauges:
equity, realized/unrealized PnL, gross exposure and open positions per account.
"""

from __future__ import annotations

import faust

from ticktape import kafka_clients, metrics
from ticktape.config import Settings
from ticktape.core.desks import PortfolioDesk

from .runner import DLQ, LATE_HEADER, Outbox, Stage, header, run

STAGE = "portfolio"


class PortfolioStage(Stage):
    checkpoint_each_batch = True  # a trading desk: see the runner module doc
    name = STAGE
    dlq = DLQ

    def __init__(self, s: Settings, table):
        super().__init__(s, table)
        self.accept("trading.ledger", "fill", "mark")
        self.positions = self.sink("trading.positions")
        self.equity = self.sink("trading.equity")
        self.desks: dict[str, tuple[int, PortfolioDesk]] = {}
        self._touched: dict[str, int] = {}  # this batch's accounts -> partition

    def forget(self, partitions: set[int]) -> None:
        for account in [a for a, (p, _) in self.desks.items() if p in partitions]:
            del self.desks[account]

    def desk(self, account: str, partition: int) -> PortfolioDesk:
        entry = self.desks.get(account)
        if entry is None:
            saved = self.table.data.get(account)
            desk = (
                PortfolioDesk(account, self.s.starting_cash)
                if saved is None
                else PortfolioDesk.from_dict(saved["desk"])
            )
            entry = self.desks[account] = (partition, desk)
        return entry[1]

    def fold(self, msg, event: tuple[str, dict], out: Outbox) -> None:
        kind, rec = event
        if kind == "fill" and header(msg, LATE_HEADER) is not None:
            kind = "late_fill"
        account = rec["account"]
        self._touched[account] = msg.partition
        for out_kind, e in self.desk(account, msg.partition).on_ledger(kind, rec):
            if out_kind == "position":
                out.send(self.positions, "position", e, f"{account}|{e['symbol']}", msg.partition)
            else:
                out.send(self.equity, "equity", e, account, msg.partition)

    async def finish(self, out: Outbox) -> None:
        touched, self._touched = self._touched, {}
        for account, partition in touched.items():
            desk = self.desks[account][1]
            pf = desk.pf
            metrics.EQUITY.labels(account).set(pf.equity)
            metrics.PNL.labels(account, "realized").set(pf.realized_pnl)
            metrics.PNL.labels(account, "unrealized").set(pf.market_value - pf.cost_basis)
            metrics.GROSS_EXPOSURE.labels(account).set(pf.gross_exposure)
            metrics.POSITIONS_OPEN.labels(account).set(sum(1 for p in pf.positions.values() if p.qty))
            out.changes[account] = (partition, {"p": partition, "desk": desk.to_dict()})


def attach(app: faust.App, s: Settings) -> None:
    table = app.Table(STAGE, partitions=kafka_clients.topic_spec("trading.ledger").partitions)
    run(app, s, PortfolioStage(s, table))

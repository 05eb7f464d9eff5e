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

from .app import run_stage
from .trading_io import LATE_HEADER, TradingIO, header

STAGE = "portfolio"


class PortfolioStage:
    def __init__(self, app: faust.App, s: Settings, table):
        self.io = TradingIO(app, s, STAGE)
        self.guard = self.io.guard  # run_stage reads lost tails through it
        self.s = s
        self.table = table
        self.sources = {s.topic("trading.ledger")}
        self.desks: dict[str, tuple[int, PortfolioDesk]] = {}

    def forget(self, partitions) -> None:
        self.io.forget(partitions)
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

    async def process(self, events) -> None:
        io = self.io
        touched = {}
        for msg in await io.inputs(self.table, events, self.sources):
            decoded = await io.decode(msg, ("fill", "mark"))
            if decoded is None:
                continue
            kind, rec = decoded
            if kind == "fill" and header(msg, LATE_HEADER) is not None:
                kind = "late_fill"
            account = rec["account"]
            touched[account] = msg.partition
            for out_kind, e in self.desk(account, msg.partition).on_ledger(kind, rec):
                if out_kind == "position":
                    await io.send("trading.positions", "position", e, f"{account}|{e['symbol']}", msg.partition)
                else:
                    await io.send("trading.equity", "equity", e, account, msg.partition)
        for account in touched:
            pf = self.desks[account][1].pf
            metrics.EQUITY.labels(account).set(pf.equity)
            metrics.PNL.labels(account, "realized").set(pf.realized_pnl)
            metrics.PNL.labels(account, "unrealized").set(pf.market_value - pf.cost_basis)
            metrics.GROSS_EXPOSURE.labels(account).set(pf.gross_exposure)
            metrics.POSITIONS_OPEN.labels(account).set(sum(1 for p in pf.positions.values() if p.qty))
        await io.flush(self.table, {a: (p, {"p": p, "desk": self.desks[a][1].to_dict()}) for a, p in touched.items()})


def attach(app: faust.App, s: Settings) -> None:
    topic = app.topic(s.topic("trading.ledger"), key_serializer="raw", value_serializer="raw")
    table = app.Table(STAGE, partitions=kafka_clients.topic_spec("trading.ledger").partitions)
    stage = PortfolioStage(app, s, table)

    run_stage(app, s, stage, topic, name=STAGE)

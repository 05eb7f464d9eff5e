"""The execution stage with an external venue (EXECUTION_VENUE=alpaca-paper):
trading.orders → Alpaca's Trading API; its trade_updates → trading.fills (and
trading.account, for the risk stage) as the internal desk's Fills, and the unfilled rest
of an order the venue ends, or does not answer within VENUE_TIMEOUT_S, → an
OrderRejected on trading.orders.rejected (and trading.account: the risk stage takes the
rest back from its committed position).

One ``VenueDesk`` (``ticktape.core.venue``) for the worker's partitions; state in the
``execution`` table, per symbol its orders open at the venue (key ``@venue:<symbol>``)
and each input partition's next offset, written after each batch and each update (its
runner checkpoints every batch: what it did at the venue is not on the log).
Reconciliation — after (re)connecting to the stream, after taking partitions, and
every ``RECONCILE_S`` while orders are open — compares the open orders with ``GET
/v2/orders?status=open`` (an order not there by ``GET /v2/orders:by_client_order_id``;
one the venue never got is sent again): a kill -9 neither loses nor doubles an order.
An order rejected unanswered that did reach the venue is canceled there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

import faust

from ticktape import kafka_clients, metrics
from ticktape.alpaca_trading import AlpacaTrading, VenueUnavailable
from ticktape.config import Settings
from ticktape.core.desks import account_partition
from ticktape.core.venue import VenueDesk, order_request

from .app import crash_on_error
from .runner import DLQ, Outbox, Runner, Stage, forget_symbols, run

log = logging.getLogger(__name__)
KEY = "@venue:"  # '@': not a symbol entry of the paper desk, whose table this is
RECONCILE_S = 5.0
RETRY_S = 0.5  # between the attempts at an order the venue does not answer


class VenueStage(Stage):
    dlq = DLQ
    checkpoint_each_batch = True  # what it did at the venue is not on the log: saved at once

    def __init__(self, app: faust.App, s: Settings, table, client: AlpacaTrading, stage: str):
        self.name = stage
        super().__init__(s, table)
        self.app, self.client = app, client
        self.orders = s.topic("trading.orders")
        self.accept("trading.orders", "order")
        self.fills = self.sink("trading.fills")
        self.rejected = self.sink("trading.orders.rejected")
        self.account_stream = self.sink("trading.account")
        self.account_partitions = kafka_clients.topic_spec("trading.account").partitions
        self.timeout_s = s.venue_timeout_s
        self.desk = VenueDesk()
        self.loaded: set[int] = set()
        self.partition_of: dict[str, int] = {}
        self.stale = True  # to reconcile: at start, after a reconnect, after new partitions
        self._new: list[dict] = []  # this batch's orders, to send to the venue
        for side in ("BUY", "SELL"):
            metrics.FILLS.labels(s.trading_account, side)

    def forget(self, partitions: set[int]) -> None:
        self.loaded -= partitions
        for sym in forget_symbols(self.partition_of, partitions):
            self.desk.forget_symbol(sym)

    def load(self, partition: int) -> None:
        if partition in self.loaded:
            return
        self.loaded.add(partition)
        self.stale = True
        for key, value in self.table.data.items():
            if key.startswith(KEY) and value and value["p"] == partition:
                sym = key[len(KEY) :]
                self.desk.set_symbol_state(sym, value)
                self.partition_of[sym] = partition

    def fold(self, msg, event: tuple[str, dict], out: Outbox) -> None:
        self.load(msg.partition)
        order = event[1]
        self.partition_of[order["symbol"]] = msg.partition
        if self.desk.on_order(order):
            self._new.append(order)

    async def finish(self, out: Outbox) -> None:
        new, self._new = self._new, []
        decided: list[tuple[str, dict]] = []
        for order in new:
            decided += await self.send(order)
            decided.append(("state", order))  # its symbol's state changed
        self.emit(decided, out)

    async def send(self, order: dict) -> list[tuple[str, dict]]:
        """Submit an order (again: its client id makes a resend harmless) → what it decides now."""
        body = order_request(order)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                accepted, answer = await self.client.submit(body)
                if accepted:
                    assert isinstance(answer, dict)
                    return self.desk.on_snapshot(answer)
                known = await self.client.by_client_id(body["client_order_id"])  # a resend: it has it
                if known is not None:
                    return self.desk.on_snapshot(known)
                return self.desk.on_send_failed(order["event_id"], "VENUE_REJECTED", f"alpaca refused: {answer}")
            except VenueUnavailable as e:
                if time.monotonic() >= deadline:
                    detail = f"no answer from alpaca within VENUE_TIMEOUT_S={self.timeout_s:g}: {e}"
                    return self.desk.on_send_failed(order["event_id"], "VENUE_UNANSWERED", detail)
                await asyncio.sleep(RETRY_S)

    async def on_update(self, runner: Runner, data: dict) -> None:
        async with runner.lock:
            decided = self.desk.on_update(data)
            if decided:
                self.emit(decided, runner.out)
                await runner.flush()

    async def on_connected(self, runner: Runner) -> None:
        self.stale = True
        await self.reconcile(runner)

    async def reconcile(self, runner: Runner) -> None:
        """Bring the open orders up to the venue's state (see the module doc)."""
        recovery = getattr(self.app.tables, "recovery", None)
        if recovery is not None and not recovery.completed.is_set():
            return  # the table is not read back yet; the timer comes again
        async with runner.lock:
            for tp in self.app.consumer.assignment():
                if tp.topic == self.orders:
                    self.load(tp.partition)
            if not (self.stale or self.desk.open or self.desk.abandoned):
                return
            self.stale = False
            try:
                at_venue = {o.get("client_order_id"): o for o in await self.client.open_orders()}
                decided: list[tuple[str, dict]] = []
                for cid, entry in list(self.desk.open.items()):
                    snap = at_venue.get(cid) or await self.client.by_client_id(cid)
                    order = entry["order"]
                    if snap is None:
                        log.info("order %s never reached alpaca: sending it", order["event_id"])
                        decided += await self.send(order)
                    else:
                        decided += self.desk.on_snapshot(snap)
                    decided.append(("state", order))
                for cid, sym in list(self.desk.abandoned.items()):
                    snap = at_venue.get(cid) or await self.client.by_client_id(cid)
                    action = self.desk.on_abandoned(cid, snap)
                    if action == "cancel":
                        assert snap is not None
                        log.warning("order %s was rejected unanswered but reached alpaca: canceling it", cid)
                        await self.client.cancel(snap["id"])
                    elif action == "filled":
                        assert snap is not None
                        log.error(
                            "order %s was rejected unanswered, yet alpaca filled %s of it: the venue's %s position "
                            "differs from the account's",
                            cid,
                            snap["filled_qty"],
                            sym,
                        )
                    decided.append(("state", {"symbol": sym}))
            except VenueUnavailable as e:
                self.stale = True
                log.warning("alpaca reconciliation: %s; trying again in %g s", e, RECONCILE_S)
                return
            self.emit(decided, runner.out)
            await runner.flush()

    def emit(self, decided: list[tuple[str, dict]], out: Outbox) -> None:
        """The fills and rejections to send, and the state of the symbols they (and the
        ("state", {"symbol": ...}) items) touch."""
        dirty: dict[str, int] = {}
        for kind, e in decided:
            sym = e["symbol"]
            p = self.partition_of[sym]
            dirty[sym] = p
            if kind == "state":
                continue
            account_p = account_partition(e["account"], self.account_partitions)
            if kind == "fill":
                out.send(self.fills, "fill", e, sym, p)
                out.send(self.account_stream, "fill", e, e["account"], account_p)
                metrics.FILLS.labels(e["account"], e["side"]).inc()
            else:
                log.warning("order %s: %s %s", e["signal_id"], e["reason_code"], e["detail"])
                out.send(self.rejected, "order_rejected", e, sym, p)
                out.send(self.account_stream, "order_rejected", e, e["account"], account_p)
        for sym, p in dirty.items():
            out.changes[KEY + sym] = (p, {"p": p, **self.desk.symbol_state(sym)})


def attach(app: faust.App, s: Settings, table, stage_name: str) -> None:
    """Run the venue stage on trading.orders, with its stream and reconciliation."""
    client = AlpacaTrading.from_settings(s)
    stage = VenueStage(app, s, table, client, stage_name)
    runner = run(app, s, stage)

    @app.task
    async def trade_updates() -> None:
        await crash_on_error(
            app,
            f"{stage_name}.trade_updates",
            client.trade_updates(partial(stage.on_update, runner), partial(stage.on_connected, runner)),
        )

    @app.timer(RECONCILE_S, name=f"{stage_name}.reconcile")
    async def reconcile() -> None:
        await crash_on_error(app, f"{stage_name}.reconcile", stage.reconcile(runner))

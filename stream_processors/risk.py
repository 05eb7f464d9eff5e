"""The risk stage: the account stream (trading.account: Signals, Marks, Fills, a venue's
OrderRejected of an order's unfilled rest, Progress)
and operator controls (trading.control) → trading.orders / trading.orders.rejected, the
portfolio's ledger (trading.ledger) and trading-state changes (trading.risk).

One ``RiskDesk`` per account (``ticktape.core.desks``): it buffers the account's events
and processes them in the canonical order once nothing can precede them any more (see
stream_processors/README.md), so its decisions do not depend on how the account stream
was interleaved.  State: the ``risk`` table, one entry per account — the desk plus the
partition of each symbol (from the strategy's header) — written to the changelog after
each batch; ``ticktape risk status`` reads that changelog.
"""

from __future__ import annotations

import logging
import time

import faust

from ticktape import kafka_clients, metrics
from ticktape.config import Settings
from ticktape.core.desks import RiskDesk, account_partition, fill_lead_us
from ticktape.core.intervals import interval_seconds
from ticktape.core.risk import HALTED, REASON_CODES
from ticktape.market_calendar import market_hours
from ticktape.risk_config import load_risk_limits, risk_config_path

from .runner import DLQ, LATE_HEADER, Outbox, Stage, header_partition, run

STAGE = "risk"
log = logging.getLogger(__name__)
PENDING_KEY = "@pending:{}:{}"  # table key of a buffered event: account, event id ('@' starts no account)


class RiskStage(Stage):
    checkpoint_each_batch = True  # a trading desk: see the runner module doc
    name = STAGE
    dlq = DLQ

    def __init__(self, s: Settings, table):
        super().__init__(s, table)
        self.limits = load_risk_limits(risk_config_path(s)).with_market_hours(market_hours(s))
        self.universe = s.symbol_list
        types = ("signal", "mark", "fill", "order_rejected", "progress", "risk_control")
        self.accept("trading.account", *types)
        self.accept("trading.control", *types)
        self.orders = self.sink("trading.orders")
        self.rejected = self.sink("trading.orders.rejected")
        self.risk_states = self.sink("trading.risk")
        self.ledger = self.sink("trading.ledger")
        self.account_partitions = kafka_clients.topic_spec("trading.account").partitions
        self.desks: dict[str, tuple[int, RiskDesk, dict]] = {}  # account -> (partition, desk, symbol partitions)
        self._latency = metrics.EVENT_LATENCY.labels(STAGE)
        for code in REASON_CODES:  # at 0 from the start, so rate() sees a first rejection
            metrics.RISK_REJECTIONS.labels(code)
        for side in ("BUY", "SELL"):  # the same for the orders of the account the strategy trades
            metrics.ORDERS.labels(s.trading_account, side)
        self.grace_s = s.bar_grace_ms / 1000  # latency from the bar's close, as in the other stages
        self._counted: dict[str, dict[str, int]] = {}  # the desks' counters already exported
        self._idle: dict[str, list[str]] = {}  # idle symbols last reported, per account
        market = s.exec_market_data if s.execution_venue.lower() == "paper" else "ticks"  # a venue fills any time
        self.fill_lead_us = fill_lead_us(market, interval_seconds(s.strategy_interval) * 1_000_000)
        # this batch's: the clock, the accounts touched (-> partition), the desks' output
        self._clock = 0.0
        self._touched: dict[str, int] = {}
        self._decided: list[tuple[RiskDesk, str, dict]] = []

    def forget(self, partitions: set[int]) -> None:
        for account in [a for a, (p, _, _) in self.desks.items() if p in partitions]:
            del self.desks[account]

    def desk(self, account: str, partition: int) -> tuple[int, RiskDesk, dict]:
        entry = self.desks.get(account)
        if entry is None:
            saved = self.table.data.get(account)
            limits = self.limits.for_account(account)
            bounds = {
                "idle_us": self.s.risk_idle_ms * 1000,
                "max_pending": self.s.risk_max_pending,
                "fill_lead_us": self.fill_lead_us,
            }
            if saved is None:
                desk, parts = RiskDesk(account, limits, self.s.starting_cash, self.universe, **bounds), {}
            else:
                prefix = PENDING_KEY.format(account, "")
                pending = [v["e"] for k, v in self.table.data.items() if k.startswith(prefix) and v]
                desk = RiskDesk.from_dict(saved["desk"], limits, self.universe, pending, **bounds)
                parts = dict(saved["partitions"])
            entry = self.desks[account] = (partition, desk, parts)
        return entry

    async def begin(self) -> None:
        self._clock = time.monotonic()  # idleness needs a symbol to stand still on the wall clock too

    def fold(self, msg, event: tuple[str, dict], out: Outbox) -> None:
        event_type, rec = event
        account = rec["account"]
        home = account_partition(account, self.account_partitions)
        if home != msg.partition:
            out.dead_letter(msg, f"account {account!r} belongs to partition {home}")
            return
        partition, desk, parts = self.desk(account, msg.partition)
        self._touched[account] = partition
        p = header_partition(msg)
        if p is not None and "symbol" in rec:
            parts[rec["symbol"]] = p
        if event_type == "progress":
            desk.on_progress(rec["symbol"], rec["ts"], self._clock)
        elif event_type == "risk_control":
            self._decided += [(desk, k, e) for k, e in desk.control(rec)]
        else:
            self._decided += [(desk, k, e) for k, e in desk.add(event_type, rec)]

    async def finish(self, out: Outbox) -> None:
        clock, touched, released = self._clock, self._touched, self._decided
        self._touched, self._decided = {}, []
        for account in touched:
            _, desk, _ = self.desks[account]
            released += [(desk, k, e) for k, e in desk.release(clock)]
        now = time.time()
        for desk, kind, e in released:
            account = desk.account
            partition, _, parts = self.desks[account]
            if kind in ("order", "rejection"):
                sym_p = parts.get(e["symbol"])
                if sym_p is None:  # cannot happen: a signal always comes with its header
                    raise RuntimeError(f"no partition known for {e['symbol']}")
                if kind == "order":
                    out.send(self.orders, "order", e, e["symbol"], sym_p)
                    metrics.ORDERS.labels(account, e["side"]).inc()
                else:
                    out.send(self.rejected, "order_rejected", e, e["symbol"], sym_p)
                    metrics.RISK_REJECTIONS.labels(e["reason_code"]).inc()
                self._latency.observe(now - e["ts"] / 1e6 - self.grace_s)
            elif kind == "risk_state":
                out.send(self.risk_states, "risk_state", e, account, partition)
            elif kind == "late_fill":
                out.send(self.ledger, "fill", e, account, partition, [(LATE_HEADER, b"1")])
            else:
                out.send(self.ledger, kind, e, account, partition)
        changes = out.changes
        for account, p in touched.items():
            desk = self.desks[account][1]
            added, removed = desk.take_pending_changes()
            changes.update((PENDING_KEY.format(account, eid), (p, None)) for eid in removed)
            changes.update((PENDING_KEY.format(account, item[3]), (p, {"p": p, "e": item})) for item in added)
            changes[account] = (p, {"p": p, "desk": desk.to_dict(), "partitions": self.desks[account][2]})
            self._report(desk, clock)

    def _report(self, desk: RiskDesk, clock: float) -> None:
        account = desk.account
        metrics.KILL_SWITCH.labels(account).set(1 if desk.risk.trading_state == HALTED else 0)
        metrics.RISK_PENDING.labels(account).set(len(desk.pending))
        idle = desk.idle(clock)
        if idle != self._idle.get(account, []):
            log.info(
                "account %s: %d idle symbols (more than RISK_IDLE_MS behind, they hold nothing back): %s",
                account,
                len(idle),
                " ".join(idle[:20]),
            )
        self._idle[account] = idle
        metrics.RISK_IDLE_SYMBOLS.labels(account).set(len(idle))
        seen = self._counted.setdefault(account, {"forced": 0, "signal": 0, "mark": 0, "fill": 0})
        for kind, n in desk.late.items():
            metrics.RISK_LATE.labels(account, kind).inc(n - seen[kind])
            seen[kind] = n
        metrics.RISK_FORCED.labels(account).inc(desk.forced - seen["forced"])
        seen["forced"] = desk.forced


def attach(app: faust.App, s: Settings) -> None:
    table = app.Table(STAGE, partitions=kafka_clients.topic_spec("trading.account").partitions)
    run(app, s, RiskStage(s, table))

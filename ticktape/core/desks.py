"""The trading flow as four deterministic desks, and the in-process run of all of them.

The Faust agents (``stream_processors/{strategy,risk,execution,portfolio}.py``) and the
in-process :func:`run_trading_chain` (tests, backtests) drive the *same* desks, so both
give the same events.  Each desk's output depends only on the events it is given, never
on how its input topics interleave:

* :class:`StrategyDesk` (per symbol): the strategy's input (predictions, or indicator
  sets) -> Signals, one Mark per input event (the bar's close), and the symbol's
  *progress*: every later Signal or Mark of the symbol has a larger ``ts`` (the input
  arrives in ``ts`` order per symbol).
* :class:`RiskDesk` (per account): the account stream (Signals, Marks, Fills, progress,
  operator controls) is put in the canonical order ``(ts, rank, symbol, event_id)`` with
  rank Mark < Signal < Fill, and an event is processed only when nothing can still come
  before it: its ts is at most every universe symbol's progress, and at most the
  earliest possible fill time of every approved order whose Fill is not back.  Marks and Fills are passed on, in that
  order, as the portfolio's ledger.  Controls apply where they arrive (operator acts).
* :class:`ExecutionDesk` (per symbol): an order fills against the first market data
  after it, kept per interval boundary (the first usable ask and bid of each window,
  or the bar), so the fill is the same whether the data came before or after the order.
* :class:`PortfolioDesk` (per account): folds the ledger into Positions and Equity.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable
from typing import Any

from . import execution as ex_mod
from . import portfolio as pf_mod
from . import risk as risk_mod
from . import strategies
from . import strategy as st_mod
from .trading import BUY

# Order of events with the same ts.  A Fill goes last: it is never known before the
# market data after its order, so an open order holds back only what sorts after its
# earliest possible fill (``fill_lead_us``): with bar fills, a whole bar of events.
RANK = {
    "mark": 0,
    "signal": 1,
    "fill": 2,
    "order_rejected": 2,
}  # a venue's rejection of an order's rest: a "fill" of nothing
FILL = RANK["fill"]


def fill_lead_us(market_data: str, width_us: int) -> int:
    """How much later than its order a fill is at the earliest: the next bar's end
    (``bars``: the fill is that bar's open, stamped with its ts), or any later tick."""
    return width_us if market_data == "bars" else 1


MEMORY_US = 86_400_000_000  # market data kept per symbol for orders still to come (event time)


def account_partition(account: str, partitions: int) -> int:
    """The partition of an account's events on account-keyed topics (any client, same answer)."""
    return zlib.crc32(account.encode()) % partitions


def canonical_key(kind: str, ev: dict) -> list:
    return [ev["ts"], RANK[kind], ev["symbol"], ev["event_id"]]


# --- strategy ------------------------------------------------------------------------


class StrategyDesk:
    """A strategy (``core.strategies``: one instance per symbol) plus the Marks and
    progress the risk desk needs.

    Everything comes from the strategy's input events (a Prediction v2 or an indicator
    set carries the bar's close): a Signal when the target changes, and a Mark (the
    close) per event.  A symbol's progress is its last input event's ts: they arrive in
    ts order per symbol.  ``spec`` None: the built-in strategy with ``cfg``'s parameters."""

    __slots__ = ("cfg", "spec", "input", "symbols")

    def __init__(self, cfg: st_mod.StrategyConfig, spec: strategies.StrategySpec | None = None):
        self.cfg = cfg
        self.spec = spec or strategies.StrategySpec(
            strategies.PUpHysteresis, strategies.builtin_params(cfg), "ticktape.api:PUpHysteresis", ""
        )
        self.input = self.spec.cls.input_kind()  # "prediction" or "indicator_set"
        self.symbols: dict[str, strategies.SymbolRun] = {}

    def _new(self, symbol: str) -> strategies.SymbolRun:
        inst = self.spec.cls(symbol, **self.spec.params)
        inst.symbol, inst.target = symbol, 0.0  # also where a subclass's __init__ skips Strategy's
        run = self.symbols[symbol] = strategies.SymbolRun(inst)
        return run

    def symbol_state(self, symbol: str) -> dict | None:
        run = self.symbols.get(symbol)
        return None if run is None else {"ts": run.last_ts, "t": run.target, "s": run.inst.to_dict()}

    def set_symbol_state(self, symbol: str, d: dict) -> None:
        run = self._new(symbol)
        run.inst.from_dict(d["s"])
        if "ts" in d:
            run.last_ts, run.target = d["ts"], d["t"]
        else:  # saved by the built-in strategy before the strategy API: its own state held both
            run.last_ts, run.target = d["s"]["last_pred_ts"], d["s"]["target"]
        run.inst.target = run.target

    def forget_symbol(self, symbol: str) -> None:
        self.symbols.pop(symbol, None)

    def progress(self, symbol: str) -> int | None:
        run = self.symbols.get(symbol)
        return None if run is None else run.last_ts

    def on_prediction(self, pred: dict) -> list[tuple[str, dict]]:
        return self.on_input("prediction", pred)

    def on_input(self, kind: str, ev: dict) -> list[tuple[str, dict]]:
        """[("mark", Mark), ("signal", Signal)?] for a prediction or indicator set; [] for
        what the strategy does not trade on (another event type or interval) or a redelivery."""
        sym = ev["symbol"]
        run = self.symbols.get(sym)
        if (
            kind != self.input
            or ev["interval"] != self.cfg.interval
            or (run is not None and run.last_ts is not None and ev["ts"] <= run.last_ts)
        ):
            return []
        arg: Any = strategies.view(kind, ev)  # validates the event first; a Prediction for "prediction", else a Bar
        run = run or self._new(sym)
        run.last_ts = ev["ts"]
        inst, spec = run.inst, self.spec
        try:
            decision = inst.on_prediction(arg) if kind == "prediction" else inst.on_bar(arg)
        except Exception as e:  # the strategy's own defect: stop in every mode alike (no dead letter)
            raise strategies.StrategyError(
                f"strategy {spec.path} on {sym} at ts {ev['ts']}: {type(e).__name__}: {e}"
            ) from e
        decided = strategies.new_target(spec, run, decision, ev["ts"])
        if not inst._fixed_state:
            strategies.check_state(spec, inst)
        mark = {
            "event_id": f"mark:{self.cfg.account}:{sym}:{ev['interval']}:{ev['ts']}",
            "account": self.cfg.account,
            "symbol": sym,
            "ts": ev["ts"],
            "price": ev["close"],
        }
        if decided is None or decided[0] == run.target:
            return [("mark", mark)]
        signal = strategies.signal_for(spec, self.cfg.account, run, ev, decided)
        run.target = inst.target = decided[0]
        return [("mark", mark), ("signal", signal)]


# --- risk ----------------------------------------------------------------------------


class RiskDesk:
    """The risk engine of one account behind the ordering rule (see the module doc).

    Bounded waiting: with ``idle_us`` > 0 a universe symbol whose progress is more than
    ``idle_us`` of event time behind the *frontier* (the highest progress of any universe
    symbol), or that has none yet, holds the account back only to just below
    ``frontier - idle_us``; so does an approved order still waiting for its fill.  In
    process that is the rule; an agent passes its clock, and a symbol (an order) is idle
    only once its progress stood still (it waited) that long on that clock too, so a
    replay's skew between partitions makes no symbol idle — unless the buffer is half
    full: then the event-time rule alone applies, and what lags is late.  A symbol that resumes within ``idle_us``
    of the frontier (a silent symbol trading again, a partition catching up) sorts after
    everything processed, so the outcome is the canonical one; only input that comes
    more than ``idle_us`` behind is *late*: a late Signal is rejected (STALE_MARKET_DATA),
    a late Mark is dropped, a late Fill is applied where it arrives (``late_fill``), and so
    is a late OrderRejected of an external venue (the unfilled rest of an order).

    An order stays open until Fills of its whole quantity, or the venue's OrderRejected of
    its rest, are in: an external venue may fill in parts (``open_rest``; the ids of the
    partial Fills counted, per open order, drop their redeliveries).

    Bounded buffer: past ``max_pending`` buffered events the oldest are processed without
    waiting (counted in ``forced``); what then sorts before them is late as above.
    """

    __slots__ = (
        "risk",
        "universe",
        "progress",
        "pending",
        "pending_ids",
        "open_orders",
        "open_rest",
        "fill_ids",
        "last_key",
        "controls",
        "universe_set",
        "idle_us",
        "max_pending",
        "frontier",
        "late",
        "forced",
        "pending_added",
        "pending_removed",
        "moved_at",
        "order_at",
        "fill_lead_us",
        "_started",
        "_barrier",
        "_at_barrier",
    )

    def __init__(
        self,
        account: str,
        limits: risk_mod.AccountLimits,
        starting_cash: float,
        universe: Iterable[str],
        idle_us: int = 0,
        max_pending: int = 100_000,
        fill_lead_us: int = 1,
    ):
        self.risk = risk_mod.Risk(account, limits, starting_cash)
        self.fill_lead_us = fill_lead_us  # an open order holds back only events after order ts + this
        self.universe = tuple(sorted(set(universe)))
        self.universe_set = frozenset(self.universe)
        if not self.universe:
            raise ValueError("the risk desk needs a symbol universe (SYMBOLS)")
        if idle_us < 0 or max_pending < 1:
            raise ValueError(f"idle_us must be >= 0 and max_pending >= 1, got {idle_us}, {max_pending}")
        self.idle_us, self.max_pending = idle_us, max_pending
        self.progress: dict[str, int] = {}
        self.frontier: int | None = None  # highest progress of a universe symbol
        self.pending: list[list] = []  # [ts, rank, symbol, event_id, kind, event], sorted
        self.pending_ids: set[str] = set()
        # since the last ``take_pending_changes`` (what the live stage saves); None after
        # ``untracked`` (in process nothing takes them: they would grow with the run)
        self.pending_added: dict[str, list] | None = {}
        self.pending_removed: set[str] | None = set()
        self.open_orders: dict[str, int] = {}  # approved order id -> ts, until its Fills are in
        self.open_rest: dict[str, float] = {}  # approved order id -> quantity still to fill
        self.fill_ids: dict[str, list[str]] = {}  # open order id -> its partial Fills counted
        self.last_key: list | None = None  # canonical key of the last processed event
        self.controls = risk_mod.RecentIds(256)
        self.late: dict[str, int] = {"signal": 0, "mark": 0, "fill": 0}
        self.forced = 0
        # the agent's clock (not saved: a restart gives every symbol and order idle_us again)
        self.moved_at: dict[str, float] = {}  # symbol -> when its progress last moved
        self.order_at: dict[str, float] = {}  # open order -> when it was approved
        self._started: float | None = None
        self._barrier: int | None = None  # min progress over the universe; None: to compute
        self._at_barrier = 0  # universe symbols whose progress is the barrier

    @property
    def account(self) -> str:
        return self.risk.account

    def to_dict(self) -> dict:
        """The desk without its buffered events (``pending_entries``: saved one per key)."""
        return {
            "risk": self.risk.to_dict(),
            "universe": list(self.universe),
            "progress": dict(self.progress),
            "open_orders": dict(self.open_orders),
            "open_rest": dict(self.open_rest),
            "fill_ids": {o: list(ids) for o, ids in self.fill_ids.items()},
            "last_key": self.last_key,
            "controls": self.controls.to_list(),
            "late": dict(self.late),
            "forced": self.forced,
        }

    @classmethod
    def from_dict(
        cls, d: dict, limits: risk_mod.AccountLimits, universe: Iterable[str], pending: Iterable[list] = (), **bounds
    ) -> "RiskDesk":
        r = risk_mod.Risk.from_dict(d["risk"], limits)
        desk = cls(r.account, limits, r.portfolio.starting_cash, universe, **bounds)
        desk.risk = r
        for sym, ts in d["progress"].items():
            desk.on_progress(sym, ts)
        desk.pending = sorted(list(p) for p in (*d.get("pending", ()), *pending))  # "pending": an older state
        desk.pending_ids = {p[3] for p in desk.pending}
        desk.open_orders = dict(d["open_orders"])
        desk.open_rest = dict(d.get("open_rest", {}))  # an older state: an order's first Fill settles it
        desk.fill_ids = {o: list(ids) for o, ids in d.get("fill_ids", {}).items()}
        desk.last_key = d["last_key"]
        desk.controls = risk_mod.RecentIds(256, d["controls"])
        desk.late = dict(d.get("late", desk.late))
        desk.forced = d.get("forced", 0)
        return desk

    def untracked(self) -> RiskDesk:
        """This desk, no longer recording what ``take_pending_changes`` would return."""
        self.pending_added = self.pending_removed = None
        return self

    def take_pending_changes(self) -> tuple[list[list], list[str]]:
        """(events buffered, event ids released) since the last call: what to save."""
        if self.pending_added is None or self.pending_removed is None:
            raise RuntimeError("this desk does not track its changes (untracked)")
        added = [p for eid, p in self.pending_added.items() if eid in self.pending_ids]
        removed = sorted(self.pending_removed)
        self.pending_added, self.pending_removed = {}, set()
        return added, removed

    def waiting_for(self, now: float | None = None) -> list[str]:
        """Universe symbols whose progress holds the account back: without progress yet,
        or the lowest of those not idle."""
        idle = set(self.idle(now))
        holding = [s for s in self.universe if s not in idle]
        missing = [s for s in holding if s not in self.progress]
        if missing or not holding:
            return missing
        low = min(self.progress[s] for s in holding)
        return [s for s in holding if self.progress[s] == low]

    def idle(self, now: float | None = None) -> list[str]:
        """Universe symbols more than ``idle_us`` behind the frontier (and, given ``now``,
        whose progress stood still that long on that clock): they hold nothing back."""
        floor = self._floor()
        if floor is None:
            return []
        return [s for s in self.universe if self.progress.get(s, floor) <= floor and self._stood_still(s, now)]

    def _floor(self) -> int | None:
        """What an idle symbol or an overdue order holds the account back to: just below
        ``frontier - idle_us``, so that input resuming within ``idle_us`` is never late."""
        return None if not self.idle_us or self.frontier is None else self.frontier - self.idle_us - 1

    def _stood_still(self, symbol: str, now: float | None) -> bool:
        """Without a clock (in process): always.  With one (the agent's monotonic seconds):
        when the symbol's progress has not moved for ``idle_us`` — a replay's symbols all
        move, however skewed in event time, so none of them goes idle — or when the buffer
        is half full: then a symbol far behind is falling behind (its partition lags on a
        loaded machine), and waiting for it would only fill the buffer."""
        if now is None or 2 * len(self.pending) >= self.max_pending:
            return True
        if self._started is None:
            self._started = now
        return now - self.moved_at.get(symbol, self._started) >= self.idle_us / 1e6

    def on_progress(self, symbol: str, ts: int, now: float | None = None) -> None:
        old = self.progress.get(symbol, -1)
        if ts > old:
            self.progress[symbol] = ts
            if now is not None:
                self.moved_at[symbol] = now
            if symbol in self.universe_set:
                if self.frontier is None or ts > self.frontier:
                    self.frontier = ts
                if old == self._barrier:
                    self._at_barrier -= 1
                    if self._at_barrier == 0:  # the last of the lowest symbols moved: the barrier rises
                        self._barrier = None

    def add(self, kind: str, ev: dict) -> list[tuple[str, dict]]:
        """Buffer a signal, mark or fill (redeliveries are dropped); what a late one
        decides at once: [("rejection", OrderRejected)] or [("late_fill", Fill)]."""
        if ev["account"] != self.account:
            raise ValueError(f"{kind} {ev['event_id']} is for account {ev['account']!r}, not {self.account!r}")
        key = canonical_key(kind, ev)
        if ev["event_id"] in self.pending_ids:
            return []
        if self.last_key is not None and key <= self.last_key:
            return self._late(kind, ev)
        if kind in ("fill", "order_rejected"):
            self._settle(kind, ev)
        self.pending_ids.add(ev["event_id"])
        item = key + [kind, ev]
        if self.pending_added is not None:
            self.pending_added[ev["event_id"]] = item
        bisect.insort(self.pending, item)
        return []

    def _settle(self, kind: str, ev: dict) -> bool:
        """Count a Fill or a venue's OrderRejected against its open order (closed once
        nothing of it is left to fill); False when its order has it already (a redelivery)."""
        oid = ev["order_id"] if kind == "fill" else risk_mod.order_id_of(ev["signal_id"])
        if oid not in self.open_orders:
            return False
        rest = self.open_rest.get(oid)
        if kind == "fill" and rest is not None and ev["quantity"] < rest - 1e-9 * max(1.0, rest):
            ids = self.fill_ids.setdefault(oid, [])
            if ev["event_id"] in ids:
                return False
            ids.append(ev["event_id"])
            self.open_rest[oid] = rest - ev["quantity"]
            # its next Fill comes after this one: the order holds back only what is later
            # (a venue, the only one to fill in parts, may fill 1 µs after: fill_lead_us 1)
            self.open_orders[oid] = max(self.open_orders[oid], ev["ts"])
            return True
        for part in (self.open_orders, self.order_at, self.open_rest, self.fill_ids):
            part.pop(oid, None)
        return True

    def _late(self, kind: str, ev: dict) -> list[tuple[str, dict]]:
        """An event sorting before what was processed: a redelivery, or late input."""
        assert self.last_key is not None  # called only for an event at or before last_key
        if kind in ("fill", "order_rejected"):
            if not self._settle(kind, ev):
                return []  # its order has it (or is settled): a redelivery
            if kind == "order_rejected":
                risk_mod.on_order_closed(self.risk, ev)
                return []
            before = self.risk.trading_state
            self.late["fill"] += 1
            risk_mod.on_fill(self.risk, ev)
            out = [("late_fill", ev)]
            if self.risk.trading_state != before:
                out.append(("risk_state", self._state_event(self.last_key[0], ev["event_id"])))
            return out
        if kind == "mark":
            self.late["mark"] += 1  # also counts redelivered marks: they carry nothing new
            return []
        rejection = risk_mod.reject_late(self.risk, ev, self.last_key[0])
        if rejection:
            self.late["signal"] += 1
        return [("rejection", r) for r in rejection]

    def control(self, ctl: dict) -> list[tuple[str, dict]]:
        """An operator command, applied now; [("risk_state", RiskState)] when the state changes."""
        if ctl["account"] != self.account:
            raise ValueError(f"control {ctl['event_id']} is for account {ctl['account']!r}")
        if self.controls.seen(ctl["event_id"]):
            return []
        r = self.risk
        before = r.trading_state
        ts = self.last_key[0] if self.last_key is not None else ctl["ts"]  # the event-time position
        risk_mod.set_trading_state(r, ctl["state"], ts, who=ctl["operator"])
        return [("risk_state", self._state_event(ts, ctl["event_id"]))] if r.trading_state != before else []

    def release(self, now: float | None = None) -> list[tuple[str, dict]]:
        """Process every buffered event nothing can precede any more, in canonical order:
        [("order"|"rejection"|"fill"|"mark"|"risk_state", event)] (Fills and Marks = ledger).
        Past ``max_pending`` buffered events, the oldest are processed regardless.
        ``now``: the agent's clock, which idleness also needs (see ``_stood_still``)."""
        floor = self._floor()
        if now is None or floor is None:
            barrier = self._barrier  # kept between calls: a backtest calls this once per event
            if barrier is None and all(s in self.progress for s in self.universe):
                barrier = self._barrier = min(self.progress[s] for s in self.universe)
                self._at_barrier = sum(self.progress[s] == barrier for s in self.universe)
            if floor is not None:
                barrier = floor if barrier is None else max(barrier, floor)
            elif barrier is None:
                barrier = -(1 << 63)  # a symbol has no progress yet: only the buffer's bound releases
        else:
            barrier = min(
                max(self.progress.get(s, floor), floor)
                if self._stood_still(s, now)
                else self.progress.get(s, -(1 << 63))
                for s in self.universe
            )
        pending = self.pending
        over = len(pending) - self.max_pending
        if not pending or (pending[0][0] > barrier and over <= 0):
            return []  # nothing to release (the common case: checked before the open orders)
        wait_s = self.idle_us / 1e6
        lead = self.fill_lead_us
        fresh = now is not None and 2 * len(pending) < self.max_pending  # as in _stood_still
        first_open = min(
            (
                ts + lead
                if floor is None or (fresh and now is not None and now - self.order_at.get(o, now) < wait_s)
                else max(ts + lead, floor)
                for o, ts in self.open_orders.items()
            ),
            default=None,
        )  # the earliest time an open order's Fill may have
        out, r = [], self.risk
        done = 0
        for item in pending:
            ts = item[0]
            if ts > barrier or (first_open is not None and (ts > first_open or (ts == first_open and item[1] == FILL))):
                if done >= over:
                    break  # the Fill of an open order may still come before this event
                self.forced += 1
            kind, ev = item[4], item[5]
            self.pending_ids.discard(ev["event_id"])
            if self.pending_removed is not None:
                self.pending_removed.add(ev["event_id"])
            self.last_key = item[:4]
            done += 1
            before = r.trading_state
            if kind == "signal":
                for decision in risk_mod.on_signal(r, ev):
                    if decision["event_id"].startswith("ord:"):
                        self.open_orders[decision["event_id"]] = decision["ts"]
                        self.open_rest[decision["event_id"]] = decision["quantity"]
                        hold = decision["ts"] + lead
                        if now is not None:
                            self.order_at[decision["event_id"]] = now
                        if floor is not None and not fresh:  # in process, or a half-full buffer
                            hold = max(hold, floor)
                        if first_open is None or hold < first_open:
                            first_open = hold
                        out.append(("order", decision))
                    else:
                        out.append(("rejection", decision))
            elif kind == "mark":
                risk_mod.on_mark(r, ev)
                out.append(("mark", ev))
            elif kind == "order_rejected":
                risk_mod.on_order_closed(r, ev)  # published by the execution stage already
            else:
                risk_mod.on_fill(r, ev)
                out.append(("fill", ev))
            if r.trading_state != before:
                out.append(("risk_state", self._state_event(ts, ev["event_id"])))
        del pending[:done]
        return out

    def _state_event(self, ts: int, trigger: str) -> dict:
        r = self.risk
        return {
            "event_id": f"state:{r.account}:{trigger}",
            "account": r.account,
            "ts": ts,
            "trading_state": r.trading_state,
            "reason": r.halt_reason if r.trading_state == risk_mod.HALTED else None,
            "detail": r.halt_detail,
            "equity": r.portfolio.equity,
            "daily_pnl": r.daily_pnl,
        }


# --- execution -----------------------------------------------------------------------


class ExecutionDesk:
    """Paper execution with market-data memory, per symbol.

    ``memory[symbol][b]`` holds, for the window ``(b, b + width]`` (ticks) or the bar
    starting at ``b`` (bars), ``[buy ts, buy price, sell ts, sell price]``: the first
    usable ask (else trade price) and bid (else trade price) in offset order.  An order
    at ``t`` fills at the first such price of a window ``b >= t``: exactly the first
    market data after it for orders on an interval boundary (every strategy order; an
    order between boundaries fills from the next boundary on).  Market data of a symbol
    is expected in ``ts`` order.
    """

    __slots__ = ("cfg", "width", "source", "memory", "newest", "open_orders", "last_order_ts")

    def __init__(self, cfg: ex_mod.ExecConfig, width_us: int, source: str = "ticks"):
        if source not in ("ticks", "bars"):
            raise ValueError(f"EXEC_MARKET_DATA must be ticks or bars, got {source!r}")
        self.cfg, self.width, self.source = cfg, width_us, source
        self.memory: dict[str, dict[int, list]] = {}
        self.newest: dict[str, int] = {}  # per symbol, its memory's newest window
        self.open_orders: dict[str, list[dict]] = {}
        self.last_order_ts: dict[str, int] = {}

    def restore_memory(self, symbol: str, windows: dict[int, list]) -> None:
        """Add saved memory windows of a symbol (as ``on_market`` reports them changed)."""
        mem = self.memory.get(symbol, {}) | windows
        self.memory[symbol] = dict(sorted(mem.items()))  # oldest first: pruning relies on it
        self.newest[symbol] = max(mem)

    def forget_symbol(self, symbol: str) -> None:
        for part in (self.memory, self.newest, self.open_orders, self.last_order_ts):
            part.pop(symbol, None)

    def symbol_state(self, symbol: str) -> dict:
        return {
            "open": [dict(o) for o in self.open_orders.get(symbol, ())],
            "last_order_ts": self.last_order_ts.get(symbol),
        }

    def set_symbol_state(self, symbol: str, d: dict) -> None:
        if d["open"]:
            self.open_orders[symbol] = [dict(o) for o in d["open"]]
        if d["last_order_ts"] is not None:
            self.last_order_ts[symbol] = d["last_order_ts"]

    def on_order(self, order: dict) -> list[dict]:
        """[Fill] when the market data after the order is already known, else [] (it waits)."""
        sym, ts = order["symbol"], order["ts"]
        last = self.last_order_ts.get(sym)
        if last is not None and ts <= last:
            return []  # redelivered: one order per symbol and ts, in ts order
        self.last_order_ts[sym] = ts
        fill = self._try(order)
        if fill is None:
            self.open_orders.setdefault(sym, []).append(order)
            return []
        return [fill]

    def on_market(self, kind: str, ev: dict) -> tuple[list[dict], list[int]]:
        """(Fills, memory windows that changed) for a tick or bar."""
        sym = ev["symbol"]
        if kind == "tick":
            if self.source != "ticks":
                return [], []
            price, ts = ev.get("price"), ev["ts"]
            ask, bid = ev.get("ask"), ev.get("bid")
            buy, sell = (ask if ask is not None else price), (bid if bid is not None else price)
            b = (ts - 1) // self.width * self.width
        else:
            if self.source != "bars":
                return [], []
            ts, buy = ev["ts"], ev["open"]
            sell, b = buy, ev["window_start"]
        mem = self.memory.get(sym) or self.memory.setdefault(sym, {})
        entry = mem.get(b)
        new_price = entry is None or (entry[0] is None and buy is not None) or (entry[2] is None and sell is not None)
        if not new_price:
            return [], []
        if entry is None:
            entry = mem[b] = [None, None, None, None]
            if b > self.newest.get(sym, b - 1):
                self.newest[sym] = b
            else:  # a tick within grace opened an older window: keep the memory oldest first
                mem = self.memory[sym] = dict(sorted(mem.items()))
        if entry[0] is None and buy is not None:
            entry[0], entry[1] = ts, buy
        if entry[2] is None and sell is not None:
            entry[2], entry[3] = ts, sell
        changed = [b]
        cutoff = b - MEMORY_US
        while (old := next(iter(mem))) < cutoff:  # the memory is oldest first; b itself stays
            del mem[old]
            changed.append(old)
        fills: list[dict] = []
        orders = self.open_orders.get(sym)
        if orders:
            waiting: list[dict] = []
            for order in orders:
                fill = self._try(order)
                (waiting if fill is None else fills).append(order if fill is None else fill)
            if waiting:
                self.open_orders[sym] = waiting
            else:
                del self.open_orders[sym]
        return fills, changed

    def _try(self, order: dict) -> dict | None:
        mem = self.memory.get(order["symbol"])
        if not mem:
            return None
        t, w = order["ts"], self.width
        slot = 0 if order["side"] == BUY else 2
        b = -(-t // w) * w
        entry = mem.get(b)  # the first window after the order: the fill is usually there
        if entry is not None and entry[slot] is not None:
            fill = ex_mod.fill_for(self.cfg, order, entry[slot], entry[slot + 1])
            if fill is not None:
                return fill
        b, top = b + w, self.newest[order["symbol"]]
        while b <= top:
            entry = mem.get(b)
            if entry is not None and entry[slot] is not None:
                fill = ex_mod.fill_for(self.cfg, order, entry[slot], entry[slot + 1])
                if fill is not None:
                    return fill
            b += w
        return None


# --- portfolio -----------------------------------------------------------------------


class PortfolioDesk:
    """The portfolio fold of one account's ledger (Fills and Marks in canonical order,
    and late Fills where the risk desk let them in)."""

    __slots__ = ("pf", "last_key", "late_ids")

    def __init__(self, account: str, starting_cash: float):
        self.pf = pf_mod.Portfolio(account, starting_cash)
        self.last_key: list | None = None  # the ledger is in canonical order: older = redelivered
        self.late_ids = risk_mod.RecentIds(256)  # late fills applied (they sort before last_key)

    def to_dict(self) -> dict:
        return {"pf": self.pf.to_dict(), "last_key": self.last_key, "late_ids": self.late_ids.to_list()}

    @classmethod
    def from_dict(cls, d: dict) -> "PortfolioDesk":
        pf = pf_mod.Portfolio.from_dict(d["pf"])
        desk = cls(pf.account, pf.starting_cash)
        desk.pf, desk.last_key = pf, d["last_key"]
        desk.late_ids = risk_mod.RecentIds(256, d.get("late_ids", ()))
        return desk

    def on_ledger(self, kind: str, ev: dict) -> list[tuple[str, dict]]:
        if kind == "late_fill":
            if self.late_ids.seen(ev["event_id"]):
                return []
            out = pf_mod.apply_fill(self.pf, ev)
        else:
            key = canonical_key(kind, ev)
            if self.last_key is not None and key <= self.last_key:
                return []
            self.last_key = key
            out = pf_mod.apply_fill(self.pf, ev) if kind == "fill" else pf_mod.on_mark(self.pf, ev)
        return [("position" if e["event_id"].startswith("pos:") else "equity", e) for e in out]


# --- in process ----------------------------------------------------------------------


class TradingChain:
    """All four desks wired as the agents wire them; :meth:`feed` one input event at a time.

    ``outputs`` collects every emitted event by kind, in emission order.
    """

    def __init__(
        self,
        strategy_cfg: st_mod.StrategyConfig,
        limits: risk_mod.RiskLimits,
        exec_cfg: ex_mod.ExecConfig,
        starting_cash: float,
        universe: Iterable[str],
        width_us: int,
        market_data: str = "ticks",
        idle_us: int = 0,
        max_pending: int = 100_000,
        strategy: strategies.StrategySpec | None = None,
    ):
        account = strategy_cfg.account
        self.strategy = StrategyDesk(strategy_cfg, strategy)
        self.risk = RiskDesk(
            account,
            limits.for_account(account),
            starting_cash,
            universe,
            idle_us,
            max_pending,
            fill_lead_us(market_data, width_us),
        ).untracked()
        self.execution = ExecutionDesk(exec_cfg, width_us, market_data)
        self.portfolio = PortfolioDesk(account, starting_cash)
        self.outputs: dict[str, list[dict]] = {
            k: [] for k in ("signal", "mark", "order", "rejection", "fill", "position", "equity", "risk_state")
        }

    def feed(self, event_type: str, ev: dict) -> None:
        if event_type == self.strategy.input:
            desk = self.strategy
            for kind, e in desk.on_input(event_type, ev):
                self.outputs[kind].append(e)
                self._decided(self.risk.add(kind, e))
            progress = desk.progress(ev["symbol"])
            if progress is not None:
                self.risk.on_progress(ev["symbol"], progress)
        elif event_type in ("tick", "bar"):
            fills = self.execution.on_market(event_type, ev)[0]
            if not fills:
                return  # the risk desk's input did not change: it has nothing more to release
            self._fills(fills)
        elif event_type == "risk_control":
            self.outputs["risk_state"] += [e for _, e in self.risk.control(ev)]
        else:
            raise ValueError(
                f"the trading chain takes no {event_type!r} events "
                f"(its strategy trades on {self.strategy.input} events)"
            )
        self._pump()

    def _fills(self, fills: list[dict]) -> None:
        for f in fills:
            self.outputs["fill"].append(f)
            self._decided(self.risk.add("fill", f))

    def _pump(self) -> None:
        while True:
            released = self.risk.release()
            if not released:
                return
            self._decided(released)

    def _decided(self, decisions: list[tuple[str, dict]]) -> None:
        for kind, e in decisions:
            if kind == "order":
                self.outputs["order"].append(e)
                self._fills(self.execution.on_order(e))
            elif kind in ("fill", "mark", "late_fill"):
                for k, pe in self.portfolio.on_ledger(kind, e):
                    self.outputs[k].append(pe)
            else:
                self.outputs[kind].append(e)


def run_trading_chain(events: Iterable[tuple[str, dict]], **chain_args) -> TradingChain:
    """Feed ``(event_type, event)`` pairs (prediction, indicator_set, tick, bar, risk_control) through a
    new :class:`TradingChain`; returns it (see ``outputs``)."""
    chain = TradingChain(**chain_args)
    for event_type, ev in events:
        chain.feed(event_type, ev)
    return chain

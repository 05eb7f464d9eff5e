"""Portfolio: the fold of fills (and price marks) into positions and equity.

Average-cost accounting.  A fill that adds to a position (or opens one) moves the
average cost to the quantity-weighted mean; a fill that reduces it realizes
``closed_qty * (price - avg_cost)`` (sign-adjusted for shorts) and leaves the average
cost alone; a fill that flips the sign opens the remainder at the fill price.
Commissions are charged to cash and to the symbol's realized PnL, so that at all
times ``equity = starting_cash + realized_pnl + unrealized_pnl``.

A symbol's mark is the last market price given to :func:`mark`; a symbol never marked
is marked at its first fill price.  The state depends only on the fills and marks, in
order, so it can be rebuilt from ``trading.fills`` (+ market data) alone.

Market value, gross exposure, cost basis and realized PnL are kept as running totals,
updated in O(1) per mark and per fill (a backtest takes an equity point per bar); the
rounding they accumulate is far below a cent (tests compare them with an exact
recomputation).
"""

from __future__ import annotations

from .trading import RecentIds, side_sign

FILL_MEMORY = 4096  # fill ids remembered to drop redeliveries


class Position:
    __slots__ = ("qty", "avg_cost", "realized_pnl")

    def __init__(self, qty: float = 0.0, avg_cost: float = 0.0, realized_pnl: float = 0.0):
        self.qty = qty
        self.avg_cost = avg_cost
        self.realized_pnl = realized_pnl


class Portfolio:
    __slots__ = (
        "account",
        "starting_cash",
        "cash",
        "positions",
        "marks",
        "market_value",
        "gross_exposure",
        "cost_basis",
        "realized_pnl",
        "recent_fills",
    )

    def __init__(self, account: str, starting_cash: float):
        self.account = account
        self.starting_cash = starting_cash
        self.cash = starting_cash
        self.positions: dict[str, Position] = {}
        self.marks: dict[str, float] = {}
        self.market_value = 0.0  # sum of qty * mark
        self.gross_exposure = 0.0  # sum of |qty| * mark
        self.cost_basis = 0.0  # sum of qty * avg_cost (unrealized = market_value - cost_basis)
        self.realized_pnl = 0.0
        self.recent_fills = RecentIds(FILL_MEMORY)

    @property
    def equity(self) -> float:
        return self.cash + self.market_value

    def to_dict(self) -> dict:
        return {
            "account": self.account,
            "starting_cash": self.starting_cash,
            "cash": self.cash,
            "positions": {
                s: {"qty": p.qty, "avg_cost": p.avg_cost, "realized_pnl": p.realized_pnl}
                for s, p in self.positions.items()
            },
            "marks": dict(self.marks),
            # running totals carry their rounding history: stored so a restore is bit-identical
            "market_value": self.market_value,
            "gross_exposure": self.gross_exposure,
            "cost_basis": self.cost_basis,
            "realized_pnl": self.realized_pnl,
            "recent_fills": self.recent_fills.to_list(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Portfolio":
        pf = cls(d["account"], d["starting_cash"])
        pf.cash = d["cash"]
        pf.positions = {s: Position(p["qty"], p["avg_cost"], p["realized_pnl"]) for s, p in d["positions"].items()}
        pf.marks = dict(d["marks"])
        pf.market_value, pf.gross_exposure = d["market_value"], d["gross_exposure"]
        pf.cost_basis, pf.realized_pnl = d["cost_basis"], d["realized_pnl"]
        pf.recent_fills = RecentIds(FILL_MEMORY, d["recent_fills"])
        return pf


def fold_fill(pf: Portfolio, fill: dict) -> Position | None:
    """Apply one fill; the symbol's position, or None for a redelivered fill."""
    if pf.recent_fills.seen(fill["event_id"]):
        return None
    if fill["account"] != pf.account:
        raise ValueError(f"fill {fill['event_id']} is for account {fill['account']!r}, not {pf.account!r}")
    sym, price, commission = fill["symbol"], fill["price"], fill["commission"]
    q = side_sign(fill["side"]) * fill["quantity"]
    pos = pf.positions.get(sym)
    if pos is None:
        pos = pf.positions[sym] = Position()
    old, old_avg, old_realized = pos.qty, pos.avg_cost, pos.realized_pnl
    new = old + q
    if old == 0.0 or (old > 0) == (q > 0):
        pos.avg_cost = (abs(old) * pos.avg_cost + abs(q) * price) / abs(new)
    else:
        closed = min(abs(q), abs(old))
        pos.realized_pnl += closed * (price - pos.avg_cost) * (1.0 if old > 0 else -1.0)
        if abs(new) <= 1e-9 * max(abs(old), abs(q)):  # float residue of a full close
            new = 0.0
            pos.avg_cost = 0.0
        elif (new > 0) != (old > 0):
            pos.avg_cost = price
    pos.qty = new
    pos.realized_pnl -= commission
    pf.cash -= q * price + commission
    m = pf.marks.get(sym)
    if m is None:
        m = pf.marks[sym] = price
    pf.market_value += (new - old) * m
    pf.gross_exposure += (abs(new) - abs(old)) * m
    pf.cost_basis += new * pos.avg_cost - old * old_avg
    pf.realized_pnl += pos.realized_pnl - old_realized
    if new == 0.0 and not any(p.qty for p in pf.positions.values()):
        pf.market_value = pf.gross_exposure = pf.cost_basis = 0.0  # flat book: no rounding residue
    return pos


def mark(pf: Portfolio, symbol: str, price: float) -> None:
    """Mark ``symbol`` at a market price (O(1))."""
    old = pf.marks.get(symbol)
    pf.marks[symbol] = price
    pos = pf.positions.get(symbol)
    if pos is not None and pos.qty:
        assert old is not None  # a held symbol is always marked (at least at its fill price)
        d = price - old
        pf.market_value += pos.qty * d
        pf.gross_exposure += abs(pos.qty) * d


def position_event(pf: Portfolio, symbol: str, ts: int, event_id: str) -> dict:
    pos = pf.positions[symbol]
    last = pf.marks[symbol]
    return {
        "event_id": event_id,
        "account": pf.account,
        "symbol": symbol,
        "ts": ts,
        "quantity": pos.qty,
        "avg_cost": pos.avg_cost,
        "realized_pnl": pos.realized_pnl,
        "unrealized_pnl": pos.qty * (last - pos.avg_cost),
        "last_price": last,
        "market_value": pos.qty * last,
    }


def equity_event(pf: Portfolio, ts: int, event_id: str) -> dict:
    return {
        "event_id": event_id,
        "account": pf.account,
        "ts": ts,
        "cash": pf.cash,
        "market_value": pf.market_value,
        "equity": pf.cash + pf.market_value,
        "gross_exposure": pf.gross_exposure,
        "realized_pnl": pf.realized_pnl,
        "unrealized_pnl": pf.market_value - pf.cost_basis,
    }


def apply_fill(pf: Portfolio, fill: dict) -> list[dict]:
    """Fold a fill: [Position, Equity] after it, or [] for a redelivered fill."""
    if fold_fill(pf, fill) is None:
        return []
    fid, ts = fill["event_id"], fill["ts"]
    return [position_event(pf, fill["symbol"], ts, f"pos:{fid}"), equity_event(pf, ts, f"eq:{fid}")]


def on_bar(pf: Portfolio, bar: dict) -> list[dict]:
    """Mark at the bar's close: [Position (if the symbol was ever held), Equity]."""
    return _marked(pf, bar["symbol"], bar["ts"], bar["close"], f"{pf.account}:{bar['event_id']}")


def on_mark(pf: Portfolio, m: dict) -> list[dict]:
    """Mark at a Mark event's price (its id already names the account)."""
    return _marked(pf, m["symbol"], m["ts"], m["price"], m["event_id"])


def _marked(pf: Portfolio, sym: str, ts: int, price: float, trigger: str) -> list[dict]:
    mark(pf, sym, price)
    out = [position_event(pf, sym, ts, f"pos:{trigger}")] if sym in pf.positions else []
    out.append(equity_event(pf, ts, f"eq:{trigger}"))
    return out

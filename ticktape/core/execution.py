"""Paper execution: fills approved orders against the market data that follows them.

An order fills in full on the first market-data event of its symbol with ``ts`` later
than the order's: a tick fills a buy at the ask and a sell at the bid (the trade price
when that side of the quote is missing), a bar (bar-only data) at its open.  The price
is then worsened by the slippage (buys pay more, sells get less).  A LIMIT order fills
only when that market price is at or better than its limit, and never beyond the limit.
Commission: ``per_share`` (quantity * rate) or ``bps`` (of notional), at least the
minimum.  The fill's ts is the market data's ts; its id derives from the order id.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .trading import BUY, RecentIds

ORDER_MEMORY = 4096  # order ids remembered to drop redeliveries
COMMISSION_MODELS = ("per_share", "bps")


@dataclass(frozen=True, slots=True)
class ExecConfig:
    slippage_bps: float = 1.0
    commission: str = "per_share"
    per_share: float = 0.005
    bps: float = 1.0
    minimum: float = 1.0

    def __post_init__(self):
        if self.commission not in COMMISSION_MODELS:
            raise ConfigError(f"execution commission must be per_share or bps, got {self.commission!r}")
        for name in ("slippage_bps", "per_share", "bps", "minimum"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"execution {name} must be >= 0, got {getattr(self, name)!r}")

    def commission_for(self, qty: float, price: float) -> float:
        raw = qty * self.per_share if self.commission == "per_share" else qty * price * self.bps / 1e4
        return max(raw, self.minimum)


class Execution:
    """Open orders per symbol (in arrival order) and the ids of recent orders."""

    __slots__ = ("cfg", "open_orders", "recent_orders")

    def __init__(self, cfg: ExecConfig):
        self.cfg = cfg
        self.open_orders: dict[str, list[dict]] = {}
        self.recent_orders = RecentIds(ORDER_MEMORY)

    def to_dict(self) -> dict:
        return {
            "open_orders": {s: [dict(o) for o in orders] for s, orders in self.open_orders.items()},
            "recent_orders": self.recent_orders.to_list(),
        }

    @classmethod
    def from_dict(cls, d: dict, cfg: ExecConfig) -> "Execution":
        ex = cls(cfg)
        ex.open_orders = {s: [dict(o) for o in orders] for s, orders in d["open_orders"].items()}
        ex.recent_orders = RecentIds(ORDER_MEMORY, d["recent_orders"])
        return ex


def on_order(ex: Execution, order: dict) -> list[dict]:
    """Queue an approved order; it fills on later market data (no output now)."""
    if not ex.recent_orders.seen(order["event_id"]):
        ex.open_orders.setdefault(order["symbol"], []).append(order)
    return []


def on_tick(ex: Execution, tick: dict) -> list[dict]:
    if tick["symbol"] not in ex.open_orders:
        return []
    price = tick.get("price")
    ask, bid = tick.get("ask"), tick.get("bid")
    return _fill(ex, tick["symbol"], tick["ts"], ask if ask is not None else price, bid if bid is not None else price)


def on_bar(ex: Execution, bar: dict) -> list[dict]:
    if bar["symbol"] not in ex.open_orders:
        return []
    return _fill(ex, bar["symbol"], bar["ts"], bar["open"], bar["open"])


def _fill(ex: Execution, symbol: str, ts: int, buy_px: float | None, sell_px: float | None) -> list[dict]:
    fills, waiting = [], []
    for order in ex.open_orders[symbol]:
        base = buy_px if order["side"] == BUY else sell_px
        fill = None if order["ts"] >= ts or base is None else fill_for(ex.cfg, order, ts, base)
        if fill is None:
            waiting.append(order)
        else:
            fills.append(fill)
    if waiting:
        ex.open_orders[symbol] = waiting
    else:
        del ex.open_orders[symbol]
    return fills


def fill_for(cfg: ExecConfig, order: dict, ts: int, base: float) -> dict | None:
    """The Fill of ``order`` against market price ``base`` (its side's) at ``ts``;
    None when a LIMIT order is not marketable at that price."""
    buy = order["side"] == BUY
    slip = cfg.slippage_bps / 1e4
    price = base * (1.0 + slip) if buy else base * (1.0 - slip)
    if order["order_type"] == "LIMIT":
        limit = order["limit_price"]
        if (base > limit) if buy else (base < limit):
            return None
        price = min(price, limit) if buy else max(price, limit)
    qty = order["quantity"]
    return {
        "event_id": f"fill:{order['event_id']}",
        "order_id": order["event_id"],
        "account": order["account"],
        "symbol": order["symbol"],
        "ts": ts,
        "side": order["side"],
        "quantity": qty,
        "price": price,
        "commission": cfg.commission_for(qty, price),
        "slippage_bps": cfg.slippage_bps,
    }

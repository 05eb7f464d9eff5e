"""An external execution venue (Alpaca's Trading API), its pure part: the request for an
approved Order, and the venue's order updates turned into the events the internal desk
makes — Fills on ``trading.fills``, and OrderRejected for what will never fill.

* The client order id is a hash of the Order's event id (``tt-`` + 40 hex digits, within
  Alpaca's 48 characters): a resend of the same Order is refused by the venue as a
  duplicate instead of doubling it.
* Fills are derived from the venue order's *cumulative* state (``filled_qty``,
  ``filled_avg_price``): a trade update and a reconciliation snapshot of the same state
  give the same Fill, a replayed update none.  A Fill's quantity is the growth of
  ``filled_qty``; its price the update's own ``price`` when its ``qty`` is that growth,
  else the average (the order's first Fill) or what the average implies.  An order
  filled in one piece gets the internal desk's id ``fill:<order id>``; a partial fill
  ``fill:<order id>@<filled qty>``.  Alpaca
  charges no commission on stocks: commission and slippage are 0.
* The unfilled rest of an order the venue ends otherwise (rejected, canceled, expired),
  or that got no answer, is an OrderRejected of that rest (``VENUE_REJECTED``,
  ``VENUE_CANCELED``, ``VENUE_UNANSWERED``; id ``rej:<order id>``): the risk stage
  takes it back from its committed position (``core.risk.on_order_closed``).
* A venue time never sorts before its order: events are stamped at least 1 µs after it.
* An order rejected unanswered may still have reached the venue: it is remembered
  (``abandoned``, the last ``ABANDONED_MEMORY``) until the venue, once it answers, shows
  it never got it or ended it; one still working is to be canceled.
"""

from __future__ import annotations

import hashlib

from .alpaca import rfc3339_us
from .trading import BUY

CLIENT_ID_PREFIX = "tt-"
ABANDONED_MEMORY = 256  # orders rejected unanswered, remembered to cancel (the oldest forgotten first)
ENDED_STATUSES = ("filled", "canceled", "expired", "rejected", "done_for_day", "replaced")
# trade_updates events (and order statuses) that end an order with a rest that never fills
CLOSING = {"rejected": "VENUE_REJECTED", "canceled": "VENUE_CANCELED", "expired": "VENUE_CANCELED"}
FILLING = ("fill", "partial_fill")
# statuses of GET /v2/orders → the update they stand for at reconciliation
STATUS_EVENT = {"filled": "fill", "partially_filled": "partial_fill", **{k: k for k in CLOSING}}
_ENDED = {"rejected": "rejected by the venue", "canceled": "canceled", "expired": "expired unfilled"}
_TIME_OF = {"fill": "filled_at", "rejected": "failed_at", "canceled": "canceled_at", "expired": "expired_at"}


def client_order_id(order_id: str) -> str:
    return CLIENT_ID_PREFIX + hashlib.sha256(order_id.encode()).hexdigest()[:40]


def _qty(x: float) -> str:
    """A quantity or price as the API's decimal string: 100 rather than 100.0."""
    return str(int(x)) if x == int(x) else repr(x)


def order_request(order: dict) -> dict:
    """The JSON body of ``POST /v2/orders`` for an approved Order (a day order)."""
    body = {
        "symbol": order["symbol"],
        "qty": _qty(order["quantity"]),
        "side": "buy" if order["side"] == BUY else "sell",
        "type": order["order_type"].lower(),
        "time_in_force": "day",
        "client_order_id": client_order_id(order["event_id"]),
    }
    if order["order_type"] == "LIMIT":
        body["limit_price"] = _qty(order["limit_price"])
    return body


def _tol(qty: float) -> float:
    return 1e-9 * max(1.0, qty)


def _number(venue_order: dict, key: str) -> float:
    value = venue_order.get(key)
    return 0.0 if value in (None, "") else float(value)


class VenueDesk:
    """The account's orders open at the venue, by client order id, with what of each has
    filled; and per symbol the last order's ts (orders of a symbol come in ts order, so
    an older one is a redelivery).  Bounded by the risk engine's order rate limits: an
    order leaves when the venue ends it."""

    __slots__ = ("open", "last_order_ts", "abandoned")

    def __init__(self) -> None:
        self.open: dict[str, dict] = {}  # client id -> {"order", "filled", "cost"}
        self.last_order_ts: dict[str, int] = {}
        self.abandoned: dict[str, str] = {}  # client id -> symbol, oldest first

    def symbol_state(self, symbol: str) -> dict:
        return {
            "open": [dict(e) for e in self.open.values() if e["order"]["symbol"] == symbol],
            "last_order_ts": self.last_order_ts.get(symbol),
            "abandoned": [cid for cid, sym in self.abandoned.items() if sym == symbol],
        }

    def set_symbol_state(self, symbol: str, d: dict) -> None:
        for e in d["open"]:
            self.open[client_order_id(e["order"]["event_id"])] = dict(e)
        if d["last_order_ts"] is not None:
            self.last_order_ts[symbol] = d["last_order_ts"]
        for cid in d.get("abandoned", ()):
            self.abandoned[cid] = symbol

    def forget_symbol(self, symbol: str) -> None:
        for cid in [c for c, e in self.open.items() if e["order"]["symbol"] == symbol]:
            del self.open[cid]
        for cid in [c for c, sym in self.abandoned.items() if sym == symbol]:
            del self.abandoned[cid]
        self.last_order_ts.pop(symbol, None)

    def on_order(self, order: dict) -> bool:
        """Record an approved Order as open; False for a redelivery (nothing to send)."""
        sym, ts = order["symbol"], order["ts"]
        last = self.last_order_ts.get(sym)
        if last is not None and ts <= last:
            return False
        self.last_order_ts[sym] = ts
        self.open[client_order_id(order["event_id"])] = {"order": order, "filled": 0.0, "cost": 0.0}
        return True

    def on_update(self, update: dict) -> list[tuple[str, dict]]:
        """A ``trade_updates`` message's data → [("fill", Fill) | ("rejection", OrderRejected)];
        [] for an order not open here (another's, or ended) and for other events."""
        venue_order = update["order"]
        event = update["event"]
        ts = rfc3339_us(update["timestamp"]) if update.get("timestamp") else None
        last = (float(update["qty"]), float(update["price"])) if update.get("qty") and update.get("price") else None
        return self._apply(venue_order, event, ts, last)

    def on_snapshot(self, venue_order: dict) -> list[tuple[str, dict]]:
        """An order as ``GET /v2/orders`` returns it (reconciliation) → what it adds."""
        event = STATUS_EVENT.get(venue_order["status"])
        if event is None:
            return []  # still working (new, accepted, pending_*): its updates will come
        stamp = venue_order.get(_TIME_OF.get(event, "updated_at")) or venue_order.get("updated_at")
        return self._apply(venue_order, event, rfc3339_us(stamp) if stamp else None, None)

    def on_send_failed(self, order_id: str, code: str, detail: str) -> list[tuple[str, dict]]:
        """The Order's request failed: refused by the venue (an HTTP 4xx: ``VENUE_REJECTED``)
        or unanswered (``VENUE_UNANSWERED``); it is rejected whole."""
        cid = client_order_id(order_id)
        entry = self.open.pop(cid, None)
        if entry is None:
            return []
        if code == "VENUE_UNANSWERED":
            self.abandoned[cid] = entry["order"]["symbol"]
            if len(self.abandoned) > ABANDONED_MEMORY:
                del self.abandoned[next(iter(self.abandoned))]
        return [("rejection", _rejection(entry, entry["order"]["ts"] + 1, code, detail))]

    def on_abandoned(self, client_id: str, venue_order: dict | None) -> str | None:
        """What the venue shows of an order rejected unanswered (None: it never got it):
        "cancel" while it still works; else it is forgotten, and "filled" when it filled
        some of it meanwhile (the venue's position then differs from the account's)."""
        if venue_order is not None and venue_order["status"] not in ENDED_STATUSES:
            return "cancel"
        self.abandoned.pop(client_id, None)
        return "filled" if venue_order is not None and _number(venue_order, "filled_qty") > 0 else None

    def _apply(self, venue_order: dict, event: str, ts: int | None, last) -> list[tuple[str, dict]]:
        cid = venue_order.get("client_order_id", "")
        entry = self.open.get(cid)
        if entry is None or (event not in FILLING and event not in CLOSING):
            return []
        order = entry["order"]
        ts = max(ts if ts is not None else order["ts"] + 1, order["ts"] + 1)
        out: list[tuple[str, dict]] = []
        fill = _grown(entry, _number(venue_order, "filled_qty"), _number(venue_order, "filled_avg_price"), ts, last)
        if fill is not None:
            out.append(("fill", fill))
        rest = order["quantity"] - entry["filled"]
        if rest <= _tol(order["quantity"]):
            del self.open[cid]
        elif event in CLOSING:
            del self.open[cid]
            reason = venue_order.get("reject_reason") or _ENDED[event]
            detail = f"alpaca {event} the order ({_qty(entry['filled'])} of {_qty(order['quantity'])} filled): {reason}"
            out.append(("rejection", _rejection(entry, ts, CLOSING[event], detail)))
        return out


def _grown(entry: dict, cum: float, avg: float, ts: int, last) -> dict | None:
    """The Fill for the growth of the venue's filled quantity to ``cum``, if any (updated in ``entry``)."""
    order = entry["order"]
    qty = cum - entry["filled"]
    if qty <= _tol(order["quantity"]):
        return None  # a replayed update, or the state a Fill already carried
    if last is not None and abs(last[0] - qty) <= _tol(qty):
        price = last[1]
    elif entry["filled"] == 0.0:
        price = avg  # the first fill(s) known: their average, exactly
    else:
        price = (cum * avg - entry["cost"]) / qty
    whole = entry["filled"] == 0.0 and cum >= order["quantity"] - _tol(order["quantity"])
    entry["filled"], entry["cost"] = cum, entry["cost"] + qty * price
    oid = order["event_id"]
    return {
        "event_id": f"fill:{oid}" if whole else f"fill:{oid}@{_qty(cum)}",
        "order_id": oid,
        "account": order["account"],
        "symbol": order["symbol"],
        "ts": ts,
        "side": order["side"],
        "quantity": qty,
        "price": price,
        "commission": 0.0,
        "slippage_bps": 0.0,
    }


def _rejection(entry: dict, ts: int, code: str, detail: str) -> dict:
    order = entry["order"]
    return {
        "event_id": f"rej:{order['event_id']}",
        "account": order["account"],
        "symbol": order["symbol"],
        "ts": ts,
        "side": order["side"],
        "quantity": order["quantity"] - entry["filled"],
        "reference_price": order["reference_price"],
        "reason_code": code,
        "detail": detail,
        "signal_id": order["signal_id"],
    }

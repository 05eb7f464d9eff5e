"""Pre-trade risk engine: each order intent becomes one Order or one OrderRejected.

State per account (:class:`Risk`): the committed position per symbol (the targets of
approved orders; paper orders fill in full, so it is where the book is heading), the
last market price and time per symbol, a portfolio fold of the account's fills (for
the daily PnL), sliding windows of approved orders, and the trading state.

An intent (Signal) asks for ``target_position``; the order is the difference to the
committed position (none at all if there is no difference).  Checks, in order; the
first that fails is the one reason code of the rejection:

1. ``TRADING_HALTED`` / ``DAILY_LOSS_LIMIT`` -- the account is HALTED (by an operator /
   by the kill switch).  HALTED rejects every order, reducing ones included: the kill
   switch stops all trading, and unwinding is a deliberate act -- reset the account to
   REDUCING (only reducing orders) or ACTIVE.  The daily loss (start-of-UTC-day equity
   minus equity, i.e. realized + unrealized) is evaluated on every fill, every mark and
   every intent; reaching the limit switches the account to HALTED, where it stays until
   :func:`set_trading_state` (``ticktape risk reset``) -- the day roll does not un-halt.
2. ``REDUCE_ONLY`` -- the account is REDUCING and the order would not reduce the
   position (reducing = same sign, smaller size; a flip is not reducing).
   ``MARKET_CLOSED`` -- with market hours (MARKET_CALENDAR), the intent's event time is
   outside a session: decided from the event's ts alone, so a replay decides the same.
3. ``STALE_MARKET_DATA`` -- no price for the symbol, or the last one is older than
   ``stale_after_s`` at the intent's ts.
4. ``PRICE_COLLAR`` -- the intent's reference price is more than ``price_collar_pct``
   away from the last price.
5. ``ORDER_RATE`` -- ``max_orders_per_symbol`` (then ``max_orders_total``) approved
   orders already within the last ``rate_window_s``.
6. ``MAX_ORDER_NOTIONAL`` -- order quantity * last price.
7. ``MAX_POSITION_QTY`` / 8. ``MAX_POSITION_NOTIONAL`` / 9. ``MAX_GROSS_EXPOSURE`` --
   the position (gross exposure) after the order, at last prices, beyond the limit;
   an order that lowers the measure is let through even while it stays above the limit
   (prices move; reducing risk must stay possible).

An external venue may fill an order in part and end the rest: its OrderRejected of the
rest (``on_order_closed``) moves the committed position back by that rest.

The daily-loss baseline is the equity at the first event of each UTC day (event time).
Resetting a HALTED account starts a fresh loss budget from the equity at the reset.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

from .calendar import MarketHours
from .errors import ConfigError
from .portfolio import Portfolio, fold_fill, mark
from .trading import US_PER_DAY, US_PER_S, RecentIds, iso, side_of, side_sign, tick_price, utc_day

ACTIVE, REDUCING, HALTED = "ACTIVE", "REDUCING", "HALTED"
TRADING_STATES = (ACTIVE, REDUCING, HALTED)
REASON_CODES = (
    "MAX_POSITION_QTY",
    "MAX_POSITION_NOTIONAL",
    "MAX_GROSS_EXPOSURE",
    "MAX_ORDER_NOTIONAL",
    "PRICE_COLLAR",
    "ORDER_RATE",
    "STALE_MARKET_DATA",
    "TRADING_HALTED",
    "REDUCE_ONLY",
    "DAILY_LOSS_LIMIT",
    "MARKET_CLOSED",
    "VENUE_REJECTED",  # the rest of an order an external venue ended (core.venue), not the risk engine's
    "VENUE_CANCELED",
    "VENUE_UNANSWERED",
)
SIGNAL_MEMORY = 4096  # signal ids remembered to drop redeliveries


# --- limits ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SymbolLimits:
    max_position_qty: float
    max_position_notional: float
    max_order_notional: float
    price_collar_pct: float


@dataclass(frozen=True, slots=True)
class AccountLimits:
    initial_state: str
    max_gross_exposure: float
    daily_loss_limit: float
    max_orders_per_symbol: int
    max_orders_total: int
    rate_window_s: float
    stale_after_s: float
    symbol_defaults: SymbolLimits
    symbols: dict  # symbol -> SymbolLimits, for symbols with their own limits
    market_hours: MarketHours | None = None  # None: orders at any time

    def for_symbol(self, symbol: str) -> SymbolLimits:
        return self.symbols.get(symbol, self.symbol_defaults)


_SYMBOL_KEYS = ("max_position_qty", "max_position_notional", "max_order_notional", "price_collar_pct")
_ACCOUNT_KEYS = (
    "initial_state",
    "max_gross_exposure",
    "daily_loss_limit",
    "max_orders_per_symbol",
    "max_orders_total",
    "rate_window_s",
    "stale_after_s",
)
_INT_KEYS = ("max_orders_per_symbol", "max_orders_total")


def _check_value(key: str, value, path: str):
    if key == "initial_state":
        if value not in TRADING_STATES:
            raise ConfigError(f"{path}: must be one of {', '.join(TRADING_STATES)}, got {value!r}")
    elif key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: must be an integer >= 1, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{path}: must be a positive number, got {value!r}")
    return value


def _mapping(raw, path: str, keys, required: bool) -> dict:
    """Validated ``{key: value}`` of one section; ``required`` = every key must be there."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in keys]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(keys)})")
    if required:
        missing = [k for k in keys if k not in raw]
        if missing:
            raise ConfigError(f"{path}: missing key {missing[0]!r}")
    return {k: _check_value(k, v, f"{path}.{k}") for k, v in raw.items()}


def _sections(raw, path: str, required: bool) -> tuple[dict, dict, dict]:
    """(account keys, symbol_defaults, {symbol: partial symbol limits}) of an account section."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping, got {type(raw).__name__}")
    known = _ACCOUNT_KEYS + ("symbol_defaults", "symbols")
    unknown = [k for k in raw if k not in known]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    if required and "symbol_defaults" not in raw:
        raise ConfigError(f"{path}: missing key 'symbol_defaults'")
    account = _mapping({k: v for k, v in raw.items() if k in _ACCOUNT_KEYS}, path, _ACCOUNT_KEYS, required)
    sym_defaults = _mapping(raw.get("symbol_defaults", {}), f"{path}.symbol_defaults", _SYMBOL_KEYS, required)
    symbols_raw = raw.get("symbols", {}) or {}
    if not isinstance(symbols_raw, dict):
        raise ConfigError(f"{path}.symbols: must be a mapping of symbol -> limits")
    symbols = {str(sym): _mapping(v, f"{path}.symbols.{sym}", _SYMBOL_KEYS, False) for sym, v in symbols_raw.items()}
    return account, sym_defaults, symbols


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """Limits of every account: ``defaults`` for any account, ``accounts`` overrides."""

    defaults: AccountLimits
    accounts: dict  # account -> AccountLimits

    def for_account(self, account: str) -> AccountLimits:
        return self.accounts.get(account, self.defaults)

    @classmethod
    def from_dict(cls, data) -> "RiskLimits":
        """Validate a parsed risk file; a bad key or value raises ConfigError naming its path.

        A symbol limit comes from, most specific first: ``accounts.<a>.symbols.<s>``,
        ``defaults.symbols.<s>``, ``accounts.<a>.symbol_defaults``, ``defaults.symbol_defaults``.
        """
        if not isinstance(data, dict):
            raise ConfigError("the risk config must be a mapping with 'defaults' and optional 'accounts'")
        unknown = [k for k in data if k not in ("defaults", "accounts")]
        if unknown:
            raise ConfigError(f"unknown top-level key {unknown[0]!r} (known: defaults, accounts)")
        if "defaults" not in data:
            raise ConfigError("missing top-level key 'defaults'")
        base = _sections(data["defaults"], "defaults", True)
        accounts_raw = data.get("accounts") or {}
        if not isinstance(accounts_raw, dict):
            raise ConfigError("accounts: must be a mapping of account name -> limits")
        accounts = {
            str(name): _build(base, _sections(raw, f"accounts.{name}", False)) for name, raw in accounts_raw.items()
        }
        return cls(_build(base, ({}, {}, {})), accounts)

    def with_market_hours(self, hours: MarketHours | None) -> "RiskLimits":
        """These limits, every account accepting orders only inside ``hours``' sessions."""
        return RiskLimits(
            replace(self.defaults, market_hours=hours),
            {a: replace(lim, market_hours=hours) for a, lim in self.accounts.items()},
        )


def _build(base, own) -> AccountLimits:
    account = {**base[0], **own[0]}
    sym_defaults = {**base[1], **own[1]}
    symbols = {
        s: SymbolLimits(**{**sym_defaults, **base[2].get(s, {}), **own[2].get(s, {})}) for s in {**base[2], **own[2]}
    }
    return AccountLimits(symbol_defaults=SymbolLimits(**sym_defaults), symbols=symbols, **account)


# --- state -----------------------------------------------------------------------------


class Risk:
    __slots__ = (
        "account",
        "limits",
        "trading_state",
        "halt_reason",
        "halt_detail",
        "portfolio",
        "committed",
        "md_ts",
        "day",
        "day_start_equity",
        "rate_symbol",
        "rate_total",
        "recent_signals",
    )

    def __init__(self, account: str, limits: AccountLimits, starting_cash: float):
        self.account = account
        self.limits = limits
        self.trading_state = limits.initial_state
        self.halt_reason: str | None = "TRADING_HALTED" if limits.initial_state == HALTED else None
        self.halt_detail = "configured initial state" if self.halt_reason else ""
        self.portfolio = Portfolio(account, starting_cash)  # its marks are the last prices
        self.committed: dict[str, float] = {}
        self.md_ts: dict[str, int] = {}
        self.day: int | None = None
        self.day_start_equity = starting_cash
        self.rate_symbol: dict[str, deque] = {}
        self.rate_total: deque = deque()
        self.recent_signals = RecentIds(SIGNAL_MEMORY)

    @property
    def daily_pnl(self) -> float:
        return self.portfolio.equity - self.day_start_equity

    def to_dict(self) -> dict:
        return {
            "account": self.account,
            "trading_state": self.trading_state,
            "halt_reason": self.halt_reason,
            "halt_detail": self.halt_detail,
            "portfolio": self.portfolio.to_dict(),
            "committed": dict(self.committed),
            "md_ts": dict(self.md_ts),
            "day": self.day,
            "day_start_equity": self.day_start_equity,
            "rate_symbol": {s: list(w) for s, w in self.rate_symbol.items()},
            "rate_total": list(self.rate_total),
            "recent_signals": self.recent_signals.to_list(),
        }

    @classmethod
    def from_dict(cls, d: dict, limits: AccountLimits) -> "Risk":
        """Restore a state; ``limits`` are today's config (a config change applies at restart)."""
        pf = Portfolio.from_dict(d["portfolio"])
        r = cls(d["account"], limits, pf.starting_cash)
        r.portfolio = pf
        r.trading_state, r.halt_reason, r.halt_detail = d["trading_state"], d["halt_reason"], d["halt_detail"]
        r.committed, r.md_ts = dict(d["committed"]), dict(d["md_ts"])
        r.day, r.day_start_equity = d["day"], d["day_start_equity"]
        r.rate_symbol = {s: deque(w) for s, w in d["rate_symbol"].items()}
        r.rate_total = deque(d["rate_total"])
        r.recent_signals = RecentIds(SIGNAL_MEMORY, d["recent_signals"])
        return r


# --- events ----------------------------------------------------------------------------


def _roll_day(r: Risk, ts: int) -> None:
    day = utc_day(ts)
    if r.day is None or day > r.day:
        r.day = day
        r.day_start_equity = r.portfolio.equity


def _check_loss(r: Risk, ts: int) -> None:
    if r.trading_state == HALTED:
        return
    loss = r.day_start_equity - r.portfolio.equity
    limit = r.limits.daily_loss_limit
    if loss >= limit:
        r.trading_state, r.halt_reason = HALTED, "DAILY_LOSS_LIMIT"
        r.halt_detail = f"daily loss {loss:.2f} reached the limit {limit:.2f} at {iso(ts)}"


def _on_price(r: Risk, symbol: str, ts: int, price: float | None) -> None:
    # runs for every tick and bar: the common path is inlined
    if r.day is None or ts >= (r.day + 1) * US_PER_DAY:
        _roll_day(r, ts)
    last = r.md_ts.get(symbol)
    if price is None or (last is not None and ts < last):
        return  # no price, or older than what we have (a late event)
    r.md_ts[symbol] = ts
    pf = r.portfolio
    mark(pf, symbol, price)
    if r.day_start_equity - (pf.cash + pf.market_value) >= r.limits.daily_loss_limit:  # = _check_loss's test
        _check_loss(r, ts)


def on_tick(r: Risk, tick: dict) -> list[dict]:
    _on_price(r, tick["symbol"], tick["ts"], tick_price(tick))
    return []


def on_bar(r: Risk, bar: dict) -> list[dict]:
    _on_price(r, bar["symbol"], bar["ts"], bar["close"])
    return []


def on_mark(r: Risk, mark: dict) -> list[dict]:
    """A Mark (the strategy stage's bar close): the market data of the trading pipeline."""
    _on_price(r, mark["symbol"], mark["ts"], mark["price"])
    return []


def on_fill(r: Risk, fill: dict) -> list[dict]:
    _roll_day(r, fill["ts"])
    if fold_fill(r.portfolio, fill) is not None:
        _check_loss(r, fill["ts"])
    return []


def on_order_closed(r: Risk, rejected: dict) -> list[dict]:
    """The unfilled rest of an approved order that will never fill (an OrderRejected from
    the venue): the committed position takes it back, so it is again where the book is."""
    sym = rejected["symbol"]
    r.committed[sym] = r.committed.get(sym, 0.0) - side_sign(rejected["side"]) * rejected["quantity"]
    return []


def set_trading_state(r: Risk, state: str, ts: int, who: str = "operator") -> None:
    """Switch the trading state (``ticktape risk reset`` = back to ACTIVE or REDUCING).

    Leaving HALTED starts a fresh daily-loss budget from the current equity.
    """
    if state not in TRADING_STATES:
        raise ValueError(f"trading state must be one of {', '.join(TRADING_STATES)}, got {state!r}")
    _roll_day(r, ts)
    if state == HALTED:
        if r.trading_state != HALTED:
            r.halt_reason, r.halt_detail = "TRADING_HALTED", f"halted by {who} at {iso(ts)}"
    elif r.trading_state == HALTED:
        r.halt_reason, r.halt_detail = None, ""
        r.day_start_equity = r.portfolio.equity
    r.trading_state = state


def _n(x: float) -> str:
    """A quantity for a message: 1200 rather than 1200.0, full precision otherwise."""
    return str(int(x)) if x == int(x) else repr(x)


def _in_window(window: deque, cutoff: int) -> int:
    while window and window[0] <= cutoff:
        window.popleft()
    return len(window)


def _reason(
    r: Risk, sig: dict, symbol: str, committed: float, target: float, qty: float, side: str
) -> tuple[str, str] | None:
    """(reason code, detail) of the first failing check, or None to approve."""
    acct = r.limits
    if r.trading_state == HALTED:
        assert r.halt_reason is not None  # every move to HALTED sets its reason
        return r.halt_reason, f"{r.halt_detail}; account {r.account} is HALTED until `ticktape risk reset`"
    reducing = committed != 0 and abs(target) < abs(committed) and (target == 0 or (target > 0) == (committed > 0))
    if r.trading_state == REDUCING and not reducing:
        return (
            "REDUCE_ONLY",
            f"account {r.account} is REDUCING: only orders that reduce a position pass; "
            f"{symbol} {_n(committed)} -> {_n(target)} does not",
        )
    ts = sig["ts"]
    hours = acct.market_hours
    if hours is not None and not hours.is_open(ts):
        return "MARKET_CLOSED", f"{iso(ts)} is outside the {hours.name} sessions"
    last_ts = r.md_ts.get(symbol)
    if last_ts is None:
        return "STALE_MARKET_DATA", f"no market data for {symbol} yet"
    age = ts - last_ts
    if age > acct.stale_after_s * US_PER_S:
        return (
            "STALE_MARKET_DATA",
            f"last {symbol} price is {age / US_PER_S:.3f} s old at {iso(ts)}, limit {acct.stale_after_s:g} s",
        )
    lim = acct.for_symbol(symbol)
    last = r.portfolio.marks[symbol]
    ref = sig["reference_price"]
    off = abs(ref - last) / last * 100.0
    if off > lim.price_collar_pct:
        return (
            "PRICE_COLLAR",
            f"reference price {ref:.4f} is {off:.2f}% from the last price {last:.4f}, collar {lim.price_collar_pct:g}%",
        )
    cutoff = ts - int(acct.rate_window_s * US_PER_S)
    window = r.rate_symbol.get(symbol)
    if window is not None and _in_window(window, cutoff) >= acct.max_orders_per_symbol:
        return (
            "ORDER_RATE",
            f"{symbol} had {len(window)} orders in the last {acct.rate_window_s:g} s, "
            f"limit {acct.max_orders_per_symbol}",
        )
    if _in_window(r.rate_total, cutoff) >= acct.max_orders_total:
        return (
            "ORDER_RATE",
            f"account {r.account} had {len(r.rate_total)} orders in the last "
            f"{acct.rate_window_s:g} s, limit {acct.max_orders_total}",
        )
    notional = qty * last
    if notional > lim.max_order_notional:
        return (
            "MAX_ORDER_NOTIONAL",
            f"order {side} {_n(qty)} {symbol} @ {last:.4f} = {notional:.2f} notional, "
            f"limit {lim.max_order_notional:.2f}",
        )
    if reducing:
        return None  # the remaining checks only stop growth
    if abs(target) > lim.max_position_qty:
        return (
            "MAX_POSITION_QTY",
            f"{symbol} position would be {_n(target)} (now {_n(committed)}), limit {_n(lim.max_position_qty)}",
        )
    pos_notional = abs(target) * last
    if pos_notional > lim.max_position_notional:
        return (
            "MAX_POSITION_NOTIONAL",
            f"{symbol} position would be {_n(target)} @ {last:.4f} = "
            f"{pos_notional:.2f} notional, limit {lim.max_position_notional:.2f}",
        )
    gross = gross_exposure(r)
    after = gross + (abs(target) - abs(committed)) * last
    if after > acct.max_gross_exposure and after > gross:
        return (
            "MAX_GROSS_EXPOSURE",
            f"gross exposure would be {after:.2f} (now {gross:.2f}), limit {acct.max_gross_exposure:.2f}",
        )
    return None


def gross_exposure(r: Risk) -> float:
    """Sum of |committed position| * last price."""
    marks = r.portfolio.marks
    return sum(abs(q) * marks[s] for s, q in r.committed.items() if q)


def _rejected(r: Risk, sig: dict, side: str, qty: float, code: str, detail: str) -> dict:
    return {
        "event_id": f"rej:{sig['event_id']}",
        "account": r.account,
        "symbol": sig["symbol"],
        "ts": sig["ts"],
        "side": side,
        "quantity": qty,
        "reference_price": sig["reference_price"],
        "reason_code": code,
        "detail": detail,
        "signal_id": sig["event_id"],
    }


def reject_late(r: Risk, sig: dict, processed_ts: int) -> list[dict]:
    """[OrderRejected] for a signal that came after the account had processed later
    events (its symbol was idle: more than RISK_IDLE_MS behind); [] for a redelivery or
    a signal already on target.  The account's state does not change."""
    if r.recent_signals.seen(sig["event_id"]):
        return []
    delta = sig["target_position"] - r.committed.get(sig["symbol"], 0.0)
    if delta == 0:
        return []
    detail = (
        f"signal at {iso(sig['ts'])} came after the account had processed events up to "
        f"{iso(processed_ts)}: its symbol was idle (more than RISK_IDLE_MS behind)"
    )
    return [_rejected(r, sig, side_of(delta), abs(delta), "STALE_MARKET_DATA", detail)]


def order_id_of(signal_id: str) -> str:
    """The event id of the Order a Signal becomes (the venue's rejection of it names only the signal)."""
    return f"ord:{signal_id}"


def on_signal(r: Risk, sig: dict) -> list[dict]:
    """[Order] or [OrderRejected]; [] for a redelivered signal or one already on target."""
    if sig["account"] != r.account:
        raise ValueError(f"signal {sig['event_id']} is for account {sig['account']!r}, not {r.account!r}")
    sig_id = sig["event_id"]
    if r.recent_signals.seen(sig_id):
        return []
    symbol, ts, target = sig["symbol"], sig["ts"], sig["target_position"]
    committed = r.committed.get(symbol, 0.0)
    delta = target - committed
    if delta == 0:
        return []
    _roll_day(r, ts)
    _check_loss(r, ts)
    side, qty = side_of(delta), abs(delta)
    rejection = _reason(r, sig, symbol, committed, target, qty, side)
    if rejection is not None:
        return [_rejected(r, sig, side, qty, *rejection)]
    r.committed[symbol] = target
    window = r.rate_symbol.get(symbol)
    if window is None:
        window = r.rate_symbol[symbol] = deque()
    window.append(ts)
    r.rate_total.append(ts)
    return [
        {
            "event_id": order_id_of(sig_id),
            "account": r.account,
            "symbol": symbol,
            "ts": ts,
            "side": side,
            "quantity": qty,
            "order_type": "MARKET",
            "limit_price": None,
            "reference_price": sig["reference_price"],
            "signal_id": sig_id,
        }
    ]

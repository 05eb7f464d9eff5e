"""`ticktape portfolio show|rebuild`: the live positions and equity of an account (the latest
event per position on the compacted trading.positions, the latest trading.equity event),
and positions rebuilt from trading.fills alone, compared with the live
state (the latest event per position on the compacted trading.positions, and the cash of
the latest trading.equity event).

Fills are folded per account in the ledger's canonical order (ts, symbol, event_id) —
the order the portfolio stage folded them — so quantities, average costs, realized PnL
and cash come out bit-identical; exit 1 when anything differs.
"""

from __future__ import annotations

from ..config import settings
from .risk import read_to_end


def register(sub):
    p = sub.add_parser("portfolio", help="portfolio: live positions and equity, rebuild from trading.fills")
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sh = psub.add_parser("show", help="the account's live positions, cash and equity")
    sh.add_argument("--account", help="account (default TRADING_ACCOUNT)")
    sh.add_argument("--json", action="store_true", help="as JSON")
    sh.set_defaults(func=run_show)
    rb = psub.add_parser("rebuild", help="recompute positions from trading.fills and compare with the live state")
    rb.add_argument("--account", help="account (default TRADING_ACCOUNT)")
    rb.set_defaults(func=run_rebuild)


def live_portfolio(s, account: str, serde=None) -> tuple[dict[str, dict], dict | None]:
    """The latest Position per symbol (trading.positions) and the latest Equity (trading.equity)."""
    from ..serde import Serde

    serde = serde or Serde(s.schema_registry_url)
    positions = {}
    for m in read_to_end(s, s.topic("trading.positions")):
        kind, rec = serde.decode(m.value())
        if kind == "position" and rec["account"] == account:
            positions[rec["symbol"]] = rec
    equity = None
    for m in read_to_end(s, s.topic("trading.equity")):
        kind, rec = serde.decode(m.value())
        if kind == "equity" and rec["account"] == account and (equity is None or rec["ts"] >= equity["ts"]):
            equity = rec
    return positions, equity


def run_show(args) -> int:
    import json

    from ..core.trading import iso
    from ..serde import to_json

    s = settings()
    account = args.account or s.trading_account
    positions, equity = live_portfolio(s, account)
    held = {sym: rec for sym, rec in sorted(positions.items()) if rec["quantity"]}
    if args.json:
        print(
            json.dumps(
                {
                    "account": account,
                    "positions": [json.loads(to_json(r)) for r in held.values()],
                    "equity": json.loads(to_json(equity)) if equity else None,
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    if equity is None and not positions:
        print(f"account {account}: no position or equity yet (the portfolio stage has seen no fill of it)")
        return 0
    print(f"account {account}" + (f": as of {iso(equity['ts'])}" if equity else ""))
    print(f"  {'symbol':<8} {'quantity':>12} {'avg cost':>12} {'realized':>12}")
    for sym, rec in held.items():
        print(f"  {sym:<8} {rec['quantity']:>12,.2f} {rec['avg_cost']:>12,.4f} {rec['realized_pnl']:>12,.2f}")
    closed = len(positions) - len(held)
    if closed:
        print(f"  ({closed} closed position(s) not shown)")
    if equity:
        print(
            f"  equity {equity['equity']:,.2f} = cash {equity['cash']:,.2f} + market value "
            f"{equity['market_value']:,.2f};  PnL realized {equity['realized_pnl']:,.2f}, unrealized "
            f"{equity['unrealized_pnl']:,.2f};  gross exposure {equity['gross_exposure']:,.2f}"
        )
    return 0


def rebuild(s, account: str):
    """(rebuilt Portfolio, live positions {symbol: (qty, avg_cost, realized)}, live cash or None)."""
    from ..core.portfolio import Portfolio, fold_fill
    from ..serde import Serde

    serde = Serde(s.schema_registry_url)
    fills = [
        rec
        for m in read_to_end(s, s.topic("trading.fills"))
        for kind, rec in [serde.decode(m.value())]
        if kind == "fill" and rec["account"] == account
    ]
    fills.sort(key=lambda f: (f["ts"], f["symbol"], f["event_id"]))
    pf = Portfolio(account, s.starting_cash)
    for f in fills:
        fold_fill(pf, f)
    positions, equity = live_portfolio(s, account, serde)
    live = {sym: (rec["quantity"], rec["avg_cost"], rec["realized_pnl"]) for sym, rec in positions.items()}
    cash = equity["cash"] if equity else None
    return pf, live, cash, len(fills)


def run_rebuild(args) -> int:
    s = settings()
    account = args.account or s.trading_account
    pf, live, cash, n = rebuild(s, account)
    print(f"account {account}: {n} fills rebuilt")
    print(f"  {'symbol':<8} {'quantity':>12} {'avg cost':>12} {'realized':>12}   live")
    equal = True
    for sym in sorted(set(pf.positions) | set(live)):
        p = pf.positions.get(sym)
        mine = (p.qty, p.avg_cost, p.realized_pnl) if p else None
        same = mine == live.get(sym)
        equal &= same
        q, a, r = mine or (0.0, 0.0, 0.0)
        print(f"  {sym:<8} {q:>12,.2f} {a:>12,.4f} {r:>12,.2f}   {'equal' if same else f'DIFFERS: {live.get(sym)}'}")
    same_cash = cash == pf.cash if live else cash in (None, pf.cash)
    equal &= same_cash
    print(f"  cash {pf.cash:,.2f}   {'equal' if same_cash else f'DIFFERS: live {cash}'}")
    print("rebuilt state equals the live state" if equal else "rebuilt state DIFFERS from the live state")
    return 0 if equal else 1

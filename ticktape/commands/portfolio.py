"""`ticktape portfolio rebuild`: positions from trading.fills alone, compared with the live
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
    p = sub.add_parser("portfolio", help="portfolio: rebuild positions from trading.fills")
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    rb = psub.add_parser("rebuild", help="recompute positions from trading.fills and compare with the live state")
    rb.add_argument("--account", help="account (default TRADING_ACCOUNT)")
    rb.set_defaults(func=run_rebuild)


def rebuild(s, account: str):
    """(rebuilt Portfolio, live positions {symbol: (qty, avg_cost, realized)}, live cash or None)."""
    from ..core.portfolio import Portfolio, fold_fill
    from ..serde import Serde

    serde = Serde(s.schema_registry_url)
    fills = [rec for m in read_to_end(s, s.topic("trading.fills"))
             for kind, rec in [serde.decode(m.value())] if kind == "fill" and rec["account"] == account]
    fills.sort(key=lambda f: (f["ts"], f["symbol"], f["event_id"]))
    pf = Portfolio(account, s.starting_cash)
    for f in fills:
        fold_fill(pf, f)
    live = {}
    for m in read_to_end(s, s.topic("trading.positions")):
        kind, rec = serde.decode(m.value())
        if kind == "position" and rec["account"] == account:
            live[rec["symbol"]] = (rec["quantity"], rec["avg_cost"], rec["realized_pnl"])
    cash, last = None, None
    for m in read_to_end(s, s.topic("trading.equity")):
        kind, rec = serde.decode(m.value())
        if kind == "equity" and rec["account"] == account and (last is None or rec["ts"] >= last):
            cash, last = rec["cash"], rec["ts"]
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

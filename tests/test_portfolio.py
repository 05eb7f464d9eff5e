"""Portfolio fold: exact accounting, events per schema, equals a brute-force recomputation."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticktape.core import portfolio as pf_mod
from ticktape.core.portfolio import Portfolio, apply_fill, equity_event, mark, on_bar
from trading_events import T0, MIN, assert_schema, bar, fill


def test_average_cost_realized_flip_and_commission_exact():
    pf = Portfolio("paper", 100_000.0)
    apply_fill(pf, fill("AAPL", T0, "BUY", 10, 100.0, commission=1.0, n=1))
    apply_fill(pf, fill("AAPL", T0 + 1, "BUY", 10, 110.0, commission=1.0, n=2))
    pos = pf.positions["AAPL"]
    assert (pos.qty, pos.avg_cost, pos.realized_pnl) == (20.0, 105.0, -2.0)
    apply_fill(pf, fill("AAPL", T0 + 2, "SELL", 5, 120.0, commission=1.0, n=3))
    assert (pos.qty, pos.avg_cost, pos.realized_pnl) == (15.0, 105.0, -3.0 + 75.0)
    # sell 20 at 100: closes 15 (-75), opens a 5 short at 100
    events = apply_fill(pf, fill("AAPL", T0 + 3, "SELL", 20, 100.0, commission=1.0, n=4))
    assert (pos.qty, pos.avg_cost, pos.realized_pnl) == (-5.0, 100.0, -4.0)
    assert pf.cash == 100_000.0 - 1000 - 1100 + 600 + 2000 - 4.0
    position, equity = events
    assert position == {
        "event_id": "pos:fill:AAPL:%d:4" % (T0 + 3),
        "account": "paper",
        "symbol": "AAPL",
        "ts": T0 + 3,
        "quantity": -5.0,
        "avg_cost": 100.0,
        "realized_pnl": -4.0,
        "unrealized_pnl": 0.0,
        "last_price": 100.0,
        "market_value": -500.0,
    }
    mark(pf, "AAPL", 90.0)  # first fill set the mark to 100; the short gains 50
    eq = equity_event(pf, T0 + 4, "eq:x")
    assert eq == {
        "event_id": "eq:x",
        "account": "paper",
        "ts": T0 + 4,
        "cash": pf.cash,
        "market_value": -450.0,
        "equity": pf.cash - 450.0,
        "gross_exposure": 450.0,
        "realized_pnl": -4.0,
        "unrealized_pnl": 50.0,
    }
    assert eq["equity"] == 100_000.0 + eq["realized_pnl"] + eq["unrealized_pnl"]
    assert_schema("position", position)
    assert_schema("equity", equity)
    assert equity["event_id"] == "eq:fill:AAPL:%d:4" % (T0 + 3)


def test_full_close_resets_average_cost_and_bar_marks_emit_position_and_equity():
    pf = Portfolio("paper", 0.0)
    apply_fill(pf, fill("MSFT", T0, "BUY", 3, 10.1, n=1))
    apply_fill(pf, fill("MSFT", T0, "SELL", 3, 10.2, n=2))
    pos = pf.positions["MSFT"]
    assert (pos.qty, pos.avg_cost) == (0.0, 0.0)
    assert math.isclose(pos.realized_pnl, 0.3, abs_tol=1e-12)
    out = on_bar(pf, bar("MSFT", T0 + MIN, 10.0, 11.0))
    assert [e["event_id"] for e in out] == [f"pos:paper:bar:MSFT:1m:{T0 + MIN}", f"eq:paper:bar:MSFT:1m:{T0 + MIN}"]
    assert out[0]["last_price"] == 11.0 and out[0]["unrealized_pnl"] == 0.0
    # a symbol never held gets only the equity point
    assert [e["event_id"][:3] for e in on_bar(pf, bar("IBM", T0 + MIN, 5.0))] == ["eq:"]


def test_redelivered_fill_is_dropped_and_foreign_account_refused():
    pf = Portfolio("paper", 1000.0)
    f = fill("AAPL", T0, "BUY", 1, 100.0)
    assert len(apply_fill(pf, f)) == 2
    assert apply_fill(pf, dict(f)) == []
    assert pf.positions["AAPL"].qty == 1.0 and pf.cash == 900.0
    with pytest.raises(ValueError, match="account 'other', not 'paper'"):
        apply_fill(pf, fill("AAPL", T0, "BUY", 1, 100.0, account="other", n=9))


# --- brute force -----------------------------------------------------------------------


def brute_force(starting_cash, events):
    """Positions and equity recomputed from the whole event list, without the fold."""
    fills, marks = {}, {}
    for ev in events:
        if ev[0] == "fill":
            fills.setdefault(ev[1]["symbol"], []).append(ev[1])
            marks.setdefault(ev[1]["symbol"], ev[1]["price"])
        else:
            marks[ev[1]] = ev[2]
    out, cash = {}, starting_cash
    for sym, fs in fills.items():
        signed = [(f["quantity"] if f["side"] == "BUY" else -f["quantity"], f["price"]) for f in fs]
        # average cost as pro-rata lots: a reduction shrinks every open lot by the same factor
        lots = []  # [signed qty, price]
        for q, p in signed:
            held = sum(lq for lq, _ in lots)
            if held == 0 or (held > 0) == (q > 0):
                lots.append([q, p])
                continue
            keep = max(0.0, 1 - abs(q) / abs(held))
            lots = [[lq * keep, lp] for lq, lp in lots if keep > 0]
            if abs(q) > abs(held):
                lots = [[q + held, p]]
        qty = sum(q for q, _ in signed)
        avg = sum(abs(lq) * lp for lq, lp in lots) / sum(abs(lq) for lq, _ in lots) if qty else 0.0
        flow = -sum(q * p for q, p in signed) - sum(f["commission"] for f in fs)
        cash += flow
        out[sym] = {"qty": qty, "avg_cost": avg, "realized": flow + qty * avg, "mark": marks[sym]}
    mv = sum(p["qty"] * p["mark"] for p in out.values())
    return out, cash, mv


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


symbols = st.sampled_from(["AAPL", "MSFT", "TSLA"])
prices = st.integers(100, 50_000).map(lambda c: c / 100)
fill_ev = st.tuples(
    st.just("fill"),
    symbols,
    st.sampled_from(["BUY", "SELL"]),
    st.integers(1, 300).map(float),
    prices,
    st.sampled_from([0.0, 1.0, 0.37]),
)
mark_ev = st.tuples(st.just("mark"), symbols, prices)


def build(raw):
    events = []
    for i, ev in enumerate(raw):
        if ev[0] == "fill":
            _, sym, side, qty, price, commission = ev
            events.append(("fill", fill(sym, T0 + i, side, qty, price, commission, n=i)))
        else:
            events.append(ev)
    return events


def run(pf, events):
    for ev in events:
        if ev[0] == "fill":
            apply_fill(pf, ev[1])
        else:
            mark(pf, ev[1], ev[2])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(fill_ev, mark_ev), min_size=1, max_size=60))
def test_fold_equals_brute_force(raw):
    events = build(raw)
    pf = Portfolio("paper", 50_000.0)
    run(pf, events)
    expected, cash, mv = brute_force(50_000.0, events)
    assert close(pf.cash, cash)
    for sym, exp in expected.items():
        pos = pf.positions[sym]
        assert pos.qty == exp["qty"]  # whole shares: exact
        assert close(pos.avg_cost, exp["avg_cost"])
        assert close(pos.realized_pnl, exp["realized"])
        assert pf.marks[sym] == exp["mark"]
    eq = equity_event(pf, T0, "eq")
    assert close(eq["market_value"], mv)
    assert close(eq["equity"], cash + mv)
    assert close(eq["gross_exposure"], sum(abs(p["qty"]) * p["mark"] for p in expected.values()))
    assert close(eq["equity"], 50_000.0 + eq["realized_pnl"] + eq["unrealized_pnl"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(fill_ev, mark_ev), min_size=1, max_size=40), st.data())
def test_restored_state_continues_bit_identically(raw, data):
    events = build(raw)
    cut = data.draw(st.integers(0, len(events)))
    straight = Portfolio("paper", 10_000.0)
    run(straight, events)
    first = Portfolio("paper", 10_000.0)
    run(first, events[:cut])
    restored = Portfolio.from_dict(json.loads(json.dumps(first.to_dict())))
    run(restored, events[cut:])
    assert restored.to_dict() == straight.to_dict()
    assert equity_event(restored, T0, "e") == equity_event(straight, T0, "e")
    # rebuilt from the fills alone (+ marks), replaying the same log twice gives the same state
    again = Portfolio("paper", 10_000.0)
    run(again, events)
    run(again, [ev for ev in events if ev[0] == "fill"])  # redelivered fills change nothing
    assert again.positions.keys() == straight.positions.keys()
    assert again.cash == straight.cash


def test_fill_memory_is_bounded():
    pf = Portfolio("paper", 0.0)
    for i in range(pf_mod.FILL_MEMORY + 10):
        apply_fill(pf, fill("AAPL", T0 + i, "BUY", 1, 1.0, n=i))
    assert len(pf.to_dict()["recent_fills"]) == pf_mod.FILL_MEMORY


def test_flat_book_has_exact_zero_totals():
    pf = Portfolio("paper", 1000.0)
    apply_fill(pf, fill("AAPL", T0, "BUY", 3, 10.1, n=1))
    apply_fill(pf, fill("MSFT", T0, "SELL", 7, 3.3, n=2))
    for p in (10.7, 10.3, 9.9, 11.1):
        mark(pf, "AAPL", p)
        mark(pf, "MSFT", p / 3)
    apply_fill(pf, fill("AAPL", T0, "SELL", 3, 11.1, n=3))
    apply_fill(pf, fill("MSFT", T0, "BUY", 7, 3.7, n=4))
    eq = equity_event(pf, T0, "e")
    assert (eq["market_value"], eq["gross_exposure"], eq["unrealized_pnl"]) == (0.0, 0.0, 0.0)
    assert eq["equity"] == eq["cash"]

"""Risk engine: one exact rejection per reason code, the kill switch, limits file loading, and
properties over arbitrary intents and prices."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticktape.config import ConfigError
from ticktape.config import settings as make_settings
from ticktape.core import risk as rk
from ticktape.core.execution import ExecConfig, Execution, on_order
from ticktape.core.execution import on_tick as exec_tick
from ticktape.risk_config import DEFAULT_RISK_CONFIG, load_risk_limits, risk_config_path
from ticktape.serde import catalog
from trading_events import SEC, T0, assert_schema, fill, signal, tick

LIMITS = {
    "defaults": {
        "initial_state": "ACTIVE",
        "max_gross_exposure": 50_000,
        "daily_loss_limit": 1_000,
        "max_orders_per_symbol": 3,
        "max_orders_total": 5,
        "rate_window_s": 60,
        "stale_after_s": 10,
        "symbol_defaults": {
            "max_position_qty": 300,
            "max_position_notional": 25_000,
            "max_order_notional": 20_000,
            "price_collar_pct": 5,
        },
    },
}
DAY = 86_400 * SEC


def engine(**account_overrides) -> rk.Risk:
    limits = rk.RiskLimits.from_dict({**LIMITS, "accounts": {"paper": account_overrides}})
    return rk.Risk("paper", limits.for_account("paper"), 100_000.0)


def px(r, symbol, ts, price):
    rk.on_tick(r, tick(symbol, ts, price=price))


def intent(r, symbol, ts, target, price, n=0):
    """The one decision for a Signal moving ``symbol`` to ``target``."""
    committed = r.committed.get(symbol, 0.0)
    out = rk.on_signal(r, signal(symbol, ts, target, price, n=n, committed=committed))
    assert len(out) == 1
    return out[0]


def rejected(decision, code, detail):
    assert decision["event_id"].startswith("rej:"), decision
    assert (decision["reason_code"], decision["detail"]) == (code, detail)
    assert_schema("order_rejected", decision)


def test_reason_codes_are_the_schema_enum():
    schema = catalog().latest("order_rejected").schema
    [field] = [f for f in schema["fields"] if f["name"] == "reason_code"]
    assert tuple(field["type"]["symbols"]) == rk.REASON_CODES


def test_approved_order_is_exact():
    r = engine()
    px(r, "AAPL", T0, 100.0)
    sig = signal("AAPL", T0 + SEC, 150.0, 100.5)
    [o] = rk.on_signal(r, sig)
    assert o == {
        "event_id": f"ord:{sig['event_id']}",
        "account": "paper",
        "symbol": "AAPL",
        "ts": T0 + SEC,
        "side": "BUY",
        "quantity": 150.0,
        "order_type": "MARKET",
        "limit_price": None,
        "reference_price": 100.5,
        "signal_id": sig["event_id"],
    }
    assert_schema("order", o)
    # the next intent is sized against the committed position: 150 -> 100 sells 50
    o2 = intent(r, "AAPL", T0 + 2 * SEC, 100.0, 100.0, n=1)
    assert (o2["side"], o2["quantity"]) == ("SELL", 50.0)
    # an intent already on target, and a redelivered one, produce nothing
    assert rk.on_signal(r, signal("AAPL", T0 + 3 * SEC, 100.0, 100.0, n=2, committed=100.0)) == []
    assert rk.on_signal(r, dict(sig)) == []
    assert r.committed == {"AAPL": 100.0}


def test_max_position_qty():
    r = engine()
    px(r, "AAPL", T0, 10.0)
    rejected(intent(r, "AAPL", T0, 301.0, 10.0), "MAX_POSITION_QTY", "AAPL position would be 301 (now 0), limit 300")


def test_max_position_notional():
    r = engine()
    px(r, "AAPL", T0, 100.0)
    assert intent(r, "AAPL", T0, 200.0, 100.0)["event_id"].startswith("ord:")
    d = intent(r, "AAPL", T0, 260.0, 100.0, n=1)
    rejected(d, "MAX_POSITION_NOTIONAL", "AAPL position would be 260 @ 100.0000 = 26000.00 notional, limit 25000.00")
    assert (d["side"], d["quantity"]) == ("BUY", 60.0)


def test_max_gross_exposure():
    r = engine()
    for sym in ("AAPL", "MSFT", "GOOGL"):
        px(r, sym, T0, 100.0)
    intent(r, "AAPL", T0, 200.0, 100.0)
    intent(r, "MSFT", T0, -200.0, 100.0)
    rejected(
        intent(r, "GOOGL", T0, 150.0, 100.0),
        "MAX_GROSS_EXPOSURE",
        "gross exposure would be 55000.00 (now 40000.00), limit 50000.00",
    )


def test_max_order_notional():
    r = engine()
    px(r, "AAPL", T0, 100.0)
    rejected(
        intent(r, "AAPL", T0, 250.0, 100.0),
        "MAX_ORDER_NOTIONAL",
        "order BUY 250 AAPL @ 100.0000 = 25000.00 notional, limit 20000.00",
    )


def test_price_collar():
    r = engine()
    px(r, "AAPL", T0, 100.0)
    rejected(
        intent(r, "AAPL", T0, 10.0, 106.0),
        "PRICE_COLLAR",
        "reference price 106.0000 is 6.00% from the last price 100.0000, collar 5%",
    )
    assert intent(r, "AAPL", T0, 10.0, 95.0, n=1)["event_id"].startswith("ord:")  # 5% is inside


def test_order_rate_per_symbol_then_sliding():
    r = engine()
    for i in range(3):
        px(r, "AAPL", T0 + i * SEC, 100.0)
        intent(r, "AAPL", T0 + i * SEC, 10.0 * (i + 1), 100.0, n=i)
    px(r, "AAPL", T0 + 59 * SEC, 100.0)
    rejected(
        intent(r, "AAPL", T0 + 59 * SEC, 40.0, 100.0, n=3), "ORDER_RATE", "AAPL had 3 orders in the last 60 s, limit 3"
    )
    px(r, "AAPL", T0 + 60 * SEC, 100.0)  # the first order leaves the window
    assert intent(r, "AAPL", T0 + 60 * SEC, 40.0, 100.0, n=4)["event_id"].startswith("ord:")


def test_order_rate_total():
    r = engine()
    for sym in ("A", "B", "C", "D", "E", "F"):
        px(r, sym, T0, 10.0)
        d = intent(r, sym, T0, 10.0, 10.0)
    rejected(d, "ORDER_RATE", "account paper had 5 orders in the last 60 s, limit 5")


def test_stale_market_data():
    r = engine()
    rejected(intent(r, "AAPL", T0, 10.0, 100.0), "STALE_MARKET_DATA", "no market data for AAPL yet")
    px(r, "AAPL", T0, 100.0)
    rk.on_tick(r, tick("AAPL", T0 + 5 * SEC, bid=99.0))  # half a quote is no price
    rejected(
        intent(r, "AAPL", T0 + 10_500_000, 10.0, 100.0, n=1),
        "STALE_MARKET_DATA",
        "last AAPL price is 10.500 s old at 2024-01-02T14:30:10.500000Z, limit 10 s",
    )


def test_trading_halted_rejects_even_reducing_orders():
    r = engine()
    px(r, "AAPL", T0, 100.0)
    intent(r, "AAPL", T0, 100.0, 100.0)
    rk.set_trading_state(r, rk.HALTED, T0 + SEC)
    rejected(
        intent(r, "AAPL", T0 + 2 * SEC, 0.0, 100.0, n=1),
        "TRADING_HALTED",
        "halted by operator at 2024-01-02T14:30:01.000000Z; account paper is HALTED until `ticktape risk reset`",
    )
    rk.set_trading_state(r, rk.ACTIVE, T0 + 3 * SEC)
    assert intent(r, "AAPL", T0 + 3 * SEC, 0.0, 100.0, n=2)["event_id"].startswith("ord:")


def test_reduce_only():
    r = engine()
    px(r, "AAPL", T0, 100.0)
    intent(r, "AAPL", T0, 100.0, 100.0)
    rk.set_trading_state(r, rk.REDUCING, T0)
    rejected(
        intent(r, "AAPL", T0, 150.0, 100.0, n=1),
        "REDUCE_ONLY",
        "account paper is REDUCING: only orders that reduce a position pass; AAPL 100 -> 150 does not",
    )
    rejected(
        intent(r, "AAPL", T0, -50.0, 100.0, n=2),
        "REDUCE_ONLY",
        "account paper is REDUCING: only orders that reduce a position pass; AAPL 100 -> -50 does not",
    )
    assert intent(r, "AAPL", T0, 50.0, 100.0, n=3)["event_id"].startswith("ord:")


def test_daily_loss_limit_trips_on_the_mark_and_holds_until_reset():
    r = engine()
    px(r, "AAPL", T0, 100.0)
    intent(r, "AAPL", T0, 100.0, 100.0)
    rk.on_fill(r, fill("AAPL", T0 + 1, "BUY", 100.0, 100.0))
    px(r, "AAPL", T0 + SEC, 90.01)
    assert r.trading_state == rk.ACTIVE  # loss 999
    px(r, "AAPL", T0 + 2 * SEC, 89.99)
    assert (r.trading_state, r.halt_reason) == (rk.HALTED, "DAILY_LOSS_LIMIT")  # loss 1001
    detail = (
        "daily loss 1001.00 reached the limit 1000.00 at 2024-01-02T14:30:02.000000Z; "
        "account paper is HALTED until `ticktape risk reset`"
    )
    rejected(intent(r, "AAPL", T0 + 3 * SEC, 0.0, 89.99, n=1), "DAILY_LOSS_LIMIT", detail)
    px(r, "AAPL", T0 + DAY, 120.0)  # a new UTC day and a recovery do not un-halt
    rejected(intent(r, "AAPL", T0 + DAY, 0.0, 120.0, n=2), "DAILY_LOSS_LIMIT", detail)
    rk.set_trading_state(r, rk.REDUCING, T0 + DAY + SEC)  # reset into unwinding only
    rejected(
        intent(r, "AAPL", T0 + DAY + SEC, 200.0, 120.0, n=3),
        "REDUCE_ONLY",
        "account paper is REDUCING: only orders that reduce a position pass; AAPL 100 -> 200 does not",
    )
    assert intent(r, "AAPL", T0 + DAY + SEC, 0.0, 120.0, n=4)["event_id"].startswith("ord:")
    assert r.day_start_equity == r.portfolio.equity  # leaving HALTED started a fresh budget


def test_daily_loss_baseline_rolls_at_the_utc_day_boundary():
    r = engine()
    midnight = (T0 // DAY + 1) * DAY
    px(r, "AAPL", midnight - 10 * SEC, 100.0)
    intent(r, "AAPL", midnight - 10 * SEC, 100.0, 100.0)
    rk.on_fill(r, fill("AAPL", midnight - 9 * SEC, "BUY", 100.0, 100.0))
    px(r, "AAPL", midnight - SEC, 91.0)  # -900 today
    px(r, "AAPL", midnight, 91.0)  # new day: baseline = equity at the roll
    px(r, "AAPL", midnight + SEC, 82.0)  # -900 today, -1800 over two days
    assert r.trading_state == rk.ACTIVE and r.daily_pnl == -900.0
    px(r, "AAPL", midnight + 2 * SEC, 81.0)
    assert r.trading_state == rk.HALTED


def test_state_round_trips_through_json():
    r = engine()
    px(r, "AAPL", T0, 100.0)
    intent(r, "AAPL", T0, 100.0, 100.0)
    rk.on_fill(r, fill("AAPL", T0 + 1, "BUY", 100.0, 100.0, commission=1.0))
    rk.set_trading_state(r, rk.REDUCING, T0 + 2)
    d = r.to_dict()
    restored = rk.Risk.from_dict(json.loads(json.dumps(d)), r.limits)
    assert restored.to_dict() == d
    a = rk.on_signal(r, signal("AAPL", T0 + 3, 50.0, 100.0, n=5, committed=100.0))
    b = rk.on_signal(restored, signal("AAPL", T0 + 3, 50.0, 100.0, n=5, committed=100.0))
    assert a == b and a[0]["event_id"].startswith("ord:")


# --- the limits file ----------------------------------------------------------------------


def test_default_file_loads_with_symbol_precedence():
    limits = load_risk_limits(DEFAULT_RISK_CONFIG)
    assert risk_config_path(make_settings()) == DEFAULT_RISK_CONFIG
    paper = limits.for_account("paper")
    assert paper.for_symbol("TSLA").max_position_notional == 50_000
    assert paper.for_symbol("AAPL").max_position_notional == 100_000
    data = {
        **LIMITS,
        "accounts": {
            "fund": {
                "daily_loss_limit": 5,
                "symbol_defaults": {"price_collar_pct": 1},
                "symbols": {"AAPL": {"max_position_qty": 7}},
            }
        },
    }
    data["defaults"] = {
        **LIMITS["defaults"],
        "symbols": {"AAPL": {"price_collar_pct": 9}, "MSFT": {"max_order_notional": 3}},
    }
    limits = rk.RiskLimits.from_dict(data)
    fund = limits.for_account("fund")
    assert fund.daily_loss_limit == 5 and fund.max_gross_exposure == 50_000
    assert fund.for_symbol("AAPL") == rk.SymbolLimits(7, 25_000, 20_000, 9)  # symbol beats account default
    assert fund.for_symbol("MSFT") == rk.SymbolLimits(300, 25_000, 3, 1)
    assert fund.for_symbol("IBM") == rk.SymbolLimits(300, 25_000, 20_000, 1)
    assert limits.for_account("other").for_symbol("IBM").price_collar_pct == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("defaults: [1, 2\n", "invalid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
        ("- 1\n", "the risk config must be a mapping with 'defaults' and optional 'accounts'"),
        ("accounts: {}\n", "missing top-level key 'defaults'"),
        ("defaults: {}\nlimits: {}\n", "unknown top-level key 'limits' (known: defaults, accounts)"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, text, message):
    path = tmp_path / "risk.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_risk_limits(path)
    assert str(e.value) == f"risk config {path}: {message}"


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"max_gross_exposure": -1}, "defaults.max_gross_exposure: must be a positive number, got -1"),
        ({"max_orders_total": 2.5}, "defaults.max_orders_total: must be an integer >= 1, got 2.5"),
        ({"daily_loss_limit": True}, "defaults.daily_loss_limit: must be a positive number, got True"),
        ({"initial_state": "OPEN"}, "defaults.initial_state: must be one of ACTIVE, REDUCING, HALTED, got 'OPEN'"),
        (
            {"max_postion_qty": 1},
            "defaults: unknown key 'max_postion_qty' (known: initial_state, "
            "max_gross_exposure, daily_loss_limit, max_orders_per_symbol, max_orders_total, rate_window_s, "
            "stale_after_s, symbol_defaults, symbols)",
        ),
        ({"symbol_defaults": {"max_position_qty": 1}}, "defaults.symbol_defaults: missing key 'max_position_notional'"),
        (
            {"symbols": {"AAPL": {"price_collar_pct": "5%"}}},
            "defaults.symbols.AAPL.price_collar_pct: must be a positive number, got '5%'",
        ),
    ],
)
def test_bad_values_name_their_path(patch, message):
    with pytest.raises(ConfigError) as e:
        rk.RiskLimits.from_dict({"defaults": {**LIMITS["defaults"], **patch}})
    assert str(e.value) == message
    with pytest.raises(ConfigError, match=r"^accounts.x.stale_after_s: must be a positive number, got 0$"):
        rk.RiskLimits.from_dict({**LIMITS, "accounts": {"x": {"stale_after_s": 0}}})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^risk config .*nope.yaml: No such file or directory$"):
        load_risk_limits(tmp_path / "nope.yaml")


# --- properties ---------------------------------------------------------------------------

SYMBOLS = ("A", "B", "C")
# one step = a price for one symbol (usually the intent's), then an intent, then time
# passes; rarely the operator switches the account to REDUCING
steps = st.lists(
    st.tuples(
        st.sampled_from(SYMBOLS + ("",) * 6),
        st.integers(50, 150).map(float),
        st.sampled_from(SYMBOLS),
        st.integers(-40, 40).map(lambda k: k * 10.0),
        st.sampled_from([0.0, 0.0, 0.01, -0.03, 0.2]),
        st.integers(0, 12),
        st.integers(0, 40),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_no_approved_order_breaks_a_limit_and_the_kill_switch_holds(evs):
    # limits that let each check fire within short sequences
    r = engine(max_gross_exposure=30_000, max_orders_per_symbol=2, symbol_defaults={"max_order_notional": 30_000})
    lim = r.limits
    ex = Execution(ExecConfig(slippage_bps=0.0))
    ts, tripped = T0, False
    for n, (tick_sym, price, sym, target, off, wait, operator) in enumerate(evs):
        t = tick(tick_sym or sym, ts, price=price)
        rk.on_tick(r, t)
        for f in exec_tick(ex, t):  # approved orders fill: PnL is real, the loss limit can trip
            rk.on_fill(r, f)
        if operator == 0 and r.trading_state == rk.ACTIVE:
            rk.set_trading_state(r, rk.REDUCING, ts)
        tripped = tripped or r.halt_reason == "DAILY_LOSS_LIMIT"
        last = r.portfolio.marks.get(sym, 100.0)
        state, before = r.trading_state, r.committed.get(sym, 0.0)
        gross_before = rk.gross_exposure(r)
        out = rk.on_signal(r, signal(sym, ts + 1, target, last * (1 + off), n=n, committed=before))
        tripped = tripped or r.halt_reason == "DAILY_LOSS_LIMIT"
        ts += 2 + wait * SEC
        if not out or not out[0]["event_id"].startswith("ord:"):
            assert r.committed.get(sym, 0.0) == before
            continue
        on_order(ex, out[0])
        assert not tripped  # after the kill switch nothing at all is approved
        reducing = before != 0 and abs(target) < abs(before) and target * before >= 0
        assert state == rk.ACTIVE or (state == rk.REDUCING and reducing)
        sl = lim.for_symbol(sym)
        mark = r.portfolio.marks[sym]
        assert abs(target - before) * mark <= sl.max_order_notional
        assert abs(out[0]["reference_price"] - mark) <= mark * sl.price_collar_pct / 100 + 1e-9
        assert reducing or abs(target) <= sl.max_position_qty
        assert reducing or abs(target) * mark <= sl.max_position_notional
        gross = rk.gross_exposure(r)
        assert gross <= lim.max_gross_exposure + 1e-6 or gross <= gross_before + 1e-6
        window = [x for x in r.rate_symbol[sym] if x > ts - lim.rate_window_s * SEC]
        assert len(window) <= lim.max_orders_per_symbol


@settings(max_examples=60, deadline=None)
@given(steps, st.data())
def test_restored_risk_state_decides_identically(evs, data):
    cut = data.draw(st.integers(0, len(evs)))

    def feed(r, part, start):
        out = []
        for n, (tick_sym, price, sym, target, off, wait, _) in enumerate(part, start):
            ts = T0 + n * 5 * SEC
            tick_sym = tick_sym or sym
            rk.on_tick(r, tick(tick_sym, ts, price=price))
            rk.on_fill(r, fill(tick_sym, ts, "BUY" if wait % 2 else "SELL", 10.0, price, n=n))
            out += rk.on_signal(r, signal(sym, ts, target, price * (1 + off), n=n, committed=r.committed.get(sym, 0.0)))
        return out

    straight = engine()
    expected = feed(straight, evs[:cut], 0) + feed(straight, evs[cut:], cut)
    first = engine()
    out = feed(first, evs[:cut], 0)
    restored = rk.Risk.from_dict(json.loads(json.dumps(first.to_dict())), first.limits)
    out += feed(restored, evs[cut:], cut)
    assert out == expected
    assert restored.to_dict() == straight.to_dict()

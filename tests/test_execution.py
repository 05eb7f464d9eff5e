"""Paper execution: fills against the next market data, slippage, commission models; and the
whole chain strategy -> risk -> execution -> portfolio is deterministic and restartable."""

from __future__ import annotations

import json

import pytest

from ticktape.config import ConfigError
from ticktape.config import settings as make_settings
from ticktape.core import portfolio as pf_mod
from ticktape.core import risk as risk_mod
from ticktape.core import strategy as st_mod
from ticktape.core.execution import ExecConfig, Execution, on_bar, on_order, on_tick
from ticktape.risk_config import DEFAULT_RISK_CONFIG, exec_config, load_risk_limits
from trading_events import MIN, T0, assert_schema, bar, prediction, tick


def order(symbol, ts, side, qty, order_type="MARKET", limit=None, n=0):
    return {
        "event_id": f"ord:sig:paper:{symbol}:{ts}:{n}",
        "account": "paper",
        "symbol": symbol,
        "ts": ts,
        "side": side,
        "quantity": qty,
        "order_type": order_type,
        "limit_price": limit,
        "reference_price": 100.0,
        "signal_id": f"sig:paper:{symbol}:{ts}:{n}",
    }


def test_buy_fills_at_next_ask_with_slippage_and_per_share_minimum():
    ex = Execution(ExecConfig(slippage_bps=10.0, commission="per_share", per_share=0.005, minimum=1.0))
    o = order("AAPL", T0, "BUY", 100.0)
    assert on_order(ex, o) == []
    assert_schema("order", o)
    assert on_tick(ex, tick("AAPL", T0, price=99.0, bid=99.9, ask=100.0)) == []  # same ts: not after
    assert on_tick(ex, tick("MSFT", T0 + 1, price=50.0, bid=49.0, ask=51.0)) == []  # other symbol
    [f] = on_tick(ex, tick("AAPL", T0 + 1, price=99.0, bid=99.9, ask=100.0))
    assert f == {
        "event_id": f"fill:{o['event_id']}",
        "order_id": o["event_id"],
        "account": "paper",
        "symbol": "AAPL",
        "ts": T0 + 1,
        "side": "BUY",
        "quantity": 100.0,
        "price": 100.0 * (1 + 10.0 / 1e4),
        "commission": 1.0,
        "slippage_bps": 10.0,
    }
    assert_schema("fill", f)
    assert ex.open_orders == {}
    assert on_tick(ex, tick("AAPL", T0 + 2, price=99.0, bid=99.9, ask=100.0)) == []  # filled once


def test_sell_at_bid_trade_price_without_quote_and_bps_commission():
    ex = Execution(ExecConfig(slippage_bps=5.0, commission="bps", bps=2.0, minimum=0.5))
    on_order(ex, order("AAPL", T0, "SELL", 1000.0, n=1))
    on_order(ex, order("AAPL", T0, "SELL", 10.0, n=2))
    f1, f2 = on_tick(ex, tick("AAPL", T0 + 1, bid=200.0, ask=200.1))
    assert f1["price"] == 200.0 * (1 - 5.0 / 1e4)
    assert f1["commission"] == 1000.0 * f1["price"] * 2.0 / 1e4  # 39.96 > minimum
    assert f2["commission"] == 0.5  # 10 shares' bps is below the minimum
    on_order(ex, order("AAPL", T0 + 2, "BUY", 1.0, n=3))
    [f3] = on_tick(ex, tick("AAPL", T0 + 3, price=150.0))  # trade-only tick: the trade price
    assert f3["price"] == 150.0 * (1 + 5.0 / 1e4)


def test_bar_only_data_fills_at_next_bar_open():
    ex = Execution(ExecConfig(slippage_bps=0.0, minimum=0.0))
    on_order(ex, order("AAPL", T0, "BUY", 7.0))
    assert on_bar(ex, bar("AAPL", T0, 90.0, 95.0)) == []  # the bar the order was decided on
    [f] = on_bar(ex, bar("AAPL", T0 + MIN, 96.0, 99.0))
    assert (f["ts"], f["price"], f["commission"]) == (T0 + MIN, 96.0, 7.0 * 0.005)


def test_limit_order_waits_until_marketable_and_never_pays_beyond_the_limit():
    ex = Execution(ExecConfig(slippage_bps=50.0))
    on_order(ex, order("AAPL", T0, "BUY", 5.0, order_type="LIMIT", limit=100.0))
    assert on_tick(ex, tick("AAPL", T0 + 1, bid=100.0, ask=100.2)) == []
    [f] = on_tick(ex, tick("AAPL", T0 + 2, bid=99.9, ask=99.8))
    assert f["price"] == 100.0  # 99.8 * 1.005 = 100.299 capped at the limit
    on_order(ex, order("AAPL", T0, "SELL", 5.0, order_type="LIMIT", limit=100.0, n=1))
    assert on_tick(ex, tick("AAPL", T0 + 3, bid=99.0, ask=99.1)) == []
    [f] = on_tick(ex, tick("AAPL", T0 + 4, bid=101.0, ask=101.1))
    assert f["price"] == 101.0 * (1 - 50.0 / 1e4)


def test_redelivered_order_fills_once_and_state_round_trips():
    ex = Execution(ExecConfig())
    o = order("AAPL", T0, "BUY", 1.0)
    on_order(ex, o)
    restored = Execution.from_dict(json.loads(json.dumps(ex.to_dict())), ex.cfg)
    assert on_order(restored, dict(o)) == []
    assert len(on_tick(restored, tick("AAPL", T0 + 1, price=10.0))) == 1
    assert restored.open_orders == {}


def test_config_from_settings_and_validation():
    cfg = exec_config(make_settings(exec_commission="bps", exec_commission_bps=3.0))
    assert (cfg.commission, cfg.bps, cfg.slippage_bps, cfg.minimum) == ("bps", 3.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="execution commission must be per_share or bps, got 'flat'"):
        ExecConfig(commission="flat")
    with pytest.raises(ConfigError, match="execution slippage_bps must be >= 0, got -1"):
        ExecConfig(slippage_bps=-1)
    # the settings name the variable
    with pytest.raises(ConfigError, match=r"^EXEC_COMMISSION='flat': must be one of PER_SHARE, BPS$"):
        make_settings(exec_commission="flat")
    with pytest.raises(ConfigError, match=r"^EXEC_SLIPPAGE_BPS=-1: must be at least 0$"):
        make_settings(exec_slippage_bps=-1)


# --- the chain ---------------------------------------------------------------------------


def market(n_bars):
    """Deterministic bars and predictions (carrying the bar's close) of two symbols (a zig-zag market)."""
    events = []
    for i in range(n_bars):
        ts = T0 + i * MIN
        for k, sym in enumerate(("AAPL", "MSFT")):
            close = 100.0 + k * 50 + (i % 17) - 8 + 0.01 * i
            events.append(("bar", bar(sym, ts, close - 0.5, close)))
            events.append(
                ("pred", prediction(sym, ts, ((i * 7 + k * 3) % 20) / 19, close=close, volatility=0.2 + 0.01 * (i % 5)))
            )
    return events


class Chain:
    """The four stages wired as the agents will be (state objects + their functions)."""

    def __init__(self, limits):
        self.limits = limits
        self.strategy = st_mod.Strategy(st_mod.StrategyConfig(min_hold_bars=2))
        self.risk = risk_mod.Risk("paper", limits.for_account("paper"), 100_000.0)
        self.exec = Execution(ExecConfig())
        self.pf = pf_mod.Portfolio("paper", 100_000.0)

    def feed(self, kind, ev) -> list[dict]:
        out = []
        if kind == "bar":
            risk_mod.on_bar(self.risk, ev)
            fills = on_bar(self.exec, ev)
            for f in fills:
                risk_mod.on_fill(self.risk, f)
                out += [f] + pf_mod.apply_fill(self.pf, f)
            out += pf_mod.on_bar(self.pf, ev)
            return out
        if kind != "pred":
            raise ValueError(f"the chain takes bar and pred events, not {kind!r}")
        signals = st_mod.on_prediction(self.strategy, ev)
        for sig in signals:
            out.append(sig)
            for decision in risk_mod.on_signal(self.risk, sig):
                out.append(decision)
                if decision["event_id"].startswith("ord:"):
                    on_order(self.exec, decision)
        return out

    def to_dict(self):
        return {
            "strategy": self.strategy.to_dict(),
            "risk": self.risk.to_dict(),
            "exec": self.exec.to_dict(),
            "pf": self.pf.to_dict(),
        }

    @classmethod
    def from_dict(cls, d, limits):
        c = cls(limits)
        c.strategy = st_mod.Strategy.from_dict(d["strategy"], c.strategy.cfg)
        c.risk = risk_mod.Risk.from_dict(d["risk"], limits.for_account("paper"))
        c.exec = Execution.from_dict(d["exec"], c.exec.cfg)
        c.pf = pf_mod.Portfolio.from_dict(d["pf"])
        return c


def test_chain_is_deterministic_restartable_and_schema_exact():
    limits = load_risk_limits(DEFAULT_RISK_CONFIG)
    events = market(120)
    chain = Chain(limits)
    run1 = [e for kind, ev in events for e in chain.feed(kind, ev)]
    kinds = {}
    for e in run1:
        kind = e["event_id"].split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        assert_schema(
            {
                "sig": "signal",
                "ord": "order",
                "rej": "order_rejected",
                "fill": "fill",
                "pos": "position",
                "eq": "equity",
            }[kind],
            e,
        )
    # the market trades: every order fills once, on the next bar (the last one waits)
    waiting = sum(len(v) for v in chain.exec.open_orders.values())
    assert kinds["sig"] >= 10 and kinds["fill"] >= 10 and kinds["ord"] == kinds["fill"] + waiting
    ids = [e["event_id"] for e in run1]
    assert len(ids) == len(set(ids))
    # a second run and a run restarted from JSON state at every 50th event are identical
    chain2, run2 = Chain(limits), []
    for i, (kind, ev) in enumerate(events):
        if i % 50 == 0:
            chain2 = Chain.from_dict(json.loads(json.dumps(chain2.to_dict())), limits)
        run2 += chain2.feed(kind, ev)
    assert json.dumps(run2) == json.dumps(run1)
    assert chain2.to_dict() == chain.to_dict()
    # risk's own fold of the fills agrees with the portfolio's; committed = filled + waiting
    assert chain.risk.portfolio.cash == chain.pf.cash
    heading = {s: p.qty for s, p in chain.pf.positions.items()}
    for o in (o for orders in chain.exec.open_orders.values() for o in orders):
        heading[o["symbol"]] += o["quantity"] if o["side"] == "BUY" else -o["quantity"]
    assert heading == chain.risk.committed

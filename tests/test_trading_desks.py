"""The trading desks (ticktape.core.desks): the in-process chain equals any interleaving of
the agents' channels, restarts included; the ordering rule; the kill switch and reset."""
from __future__ import annotations

import json
import random
from collections import deque

import pytest
from trading_events import MIN, T0, assert_schema, indicator_set, prediction, tick

from ticktape.core import desks
from ticktape.core.execution import ExecConfig
from ticktape.core.risk import RiskLimits
from ticktape.core.strategy import StrategyConfig

SYMBOLS = ("AAPL", "KO", "MSFT")
LIMITS_FILE = {"defaults": {
    "initial_state": "ACTIVE", "max_gross_exposure": 25_000, "daily_loss_limit": 3000,
    "max_orders_per_symbol": 3, "max_orders_total": 100, "rate_window_s": 600, "stale_after_s": 120,
    "symbol_defaults": {"max_position_qty": 5000, "max_position_notional": 100_000,
                        "max_order_notional": 100_000, "price_collar_pct": 5}}}
LIMITS = RiskLimits.from_dict(LIMITS_FILE)
# the same configuration as worker settings
ENV = {"SYMBOLS": " ".join(SYMBOLS), "STRATEGY_MIN_HOLD_BARS": "2", "STRATEGY_NOTIONAL": "10000",
       "EXEC_SLIPPAGE_BPS": "2", "STARTING_CASH": "100000", "TRADING_ACCOUNT": "paper", "STRATEGY_INTERVAL": "1m"}


def chain_args(market_data="ticks"):
    return dict(strategy_cfg=StrategyConfig(min_hold_bars=2, notional=10_000.0), limits=LIMITS,
                exec_cfg=ExecConfig(slippage_bps=2.0), starting_cash=100_000.0, universe=SYMBOLS,
                width_us=MIN, market_data=market_data)


def price(k, i, crash_at):
    p = 100.0 + 40 * k + 0.3 * ((i * (k + 3)) % 11 - 5) + 0.01 * i
    return p * (0.8 ** max(0, i - crash_at) if k == 0 else 1.0)  # AAPL crashes (while held long)


def streams(n_bars, crash_at=10**9):
    """Per (input, symbol) streams, each in ts order, as the topics deliver them."""
    out = {}
    for k, sym in enumerate(SYMBOLS):
        ticks, inds, preds = [], [], []
        for i in range(n_bars):
            ts = T0 + i * MIN
            close = price(k, i, crash_at)
            for j, dt in enumerate((1, MIN // 3, MIN // 2)):  # ticks in the window after the bar
                p = close + 0.05 * j
                ticks.append(tick(sym, ts + dt, price=p, bid=p - 0.02, ask=p + 0.02, seq=j))
            inds.append(indicator_set(sym, ts, close))
            preds.append(prediction(sym, ts, ((i * 7 + k * 5) % 20) / 19))
        out[("tick", sym)], out[("indicator_set", sym)], out[("prediction", sym)] = ticks, inds, preds
    return out


def sequential(st, market_data="ticks"):
    """Inputs one stream-time step at a time (the in-process chain)."""
    events = sorted(((ev["ts"], kind, ev["symbol"], i), kind, ev)
                    for (kind, _), evs in st.items() for i, ev in enumerate(evs))
    return desks.run_trading_chain(((kind, ev) for _, kind, ev in events), **chain_args(market_data)).outputs


class Agents:
    """The four desks behind channels with arbitrary delivery order, as Kafka gives them:
    order is kept per channel (a writer into a partition), not across channels; after a
    restart a channel may deliver its last items again."""

    def __init__(self, st, market_data="ticks"):
        a = chain_args(market_data)
        self.a = a
        self.strategy = desks.StrategyDesk(a["strategy_cfg"])
        self.risk = desks.RiskDesk("paper", LIMITS.for_account("paper"), a["starting_cash"], SYMBOLS)
        self.execution = desks.ExecutionDesk(a["exec_cfg"], MIN, market_data)
        self.portfolio = desks.PortfolioDesk("paper", a["starting_cash"])
        self.channels = {key: deque(evs) for key, evs in st.items()}
        self.delivered: dict[tuple, deque] = {}
        self.out = {k: [] for k in ("signal", "mark", "order", "rejection", "fill", "position", "equity",
                                    "risk_state")}

    def push(self, channel, item):
        self.channels.setdefault(channel, deque()).append(item)

    def step(self, rng) -> bool:
        ready = sorted(k for k, q in self.channels.items() if q)
        if not ready:
            return False
        channel = rng.choice(ready)
        item = self.channels[channel].popleft()
        self.delivered.setdefault(channel, deque(maxlen=4)).append(item)
        kind = channel[0]
        if kind in ("indicator_set", "prediction"):
            sym = item["symbol"]
            fn = self.strategy.on_indicator_set if kind == "indicator_set" else self.strategy.on_prediction
            for k, e in fn(item):
                self.out[k].append(e)
                self.push(("account", "strategy", sym), (k, e))
            progress = self.strategy.progress(sym)
            if progress is not None:
                self.push(("account", "strategy", sym), ("progress", {"symbol": sym, "ts": progress}))
        elif kind in ("tick", "order"):
            fills = (self.execution.on_market("tick", item)[0] if kind == "tick"
                     else self.execution.on_order(item))
            for f in fills:
                self.out["fill"].append(f)
                self.push(("account", "execution", f["symbol"]), ("fill", f))
        elif kind == "account":
            k, e = item
            if k == "progress":
                self.risk.on_progress(e["symbol"], e["ts"])
            elif k == "risk_control":
                self.out["risk_state"] += [x for _, x in self.risk.control(e)]
            else:
                self.risk.add(k, e)
            for k2, e2 in self.risk.release():
                if k2 == "order":
                    self.out["order"].append(e2)
                    self.push(("order", e2["symbol"]), e2)
                elif k2 in ("fill", "mark"):
                    self.push(("ledger",), (k2, e2))
                else:
                    self.out[k2].append(e2)
        else:  # ledger
            for k, e in self.portfolio.on_ledger(*item):
                self.out[k].append(e)
        return True

    def redeliver(self, rng):
        """Kafka after a crash: the last items of each channel come again (the state is newer)."""
        for channel, items in self.delivered.items():
            again = list(items)[len(items) - rng.randint(0, len(items)):]
            self.channels[channel].extendleft(reversed(again))

    def restart(self):
        """Every desk from its JSON state, as the agents restore it from their tables."""
        rt = lambda x: json.loads(json.dumps(x))  # noqa: E731
        strategy = desks.StrategyDesk(self.a["strategy_cfg"])
        for sym in SYMBOLS:
            state = self.strategy.symbol_state(sym)
            if state is not None:
                strategy.set_symbol_state(sym, rt(state))
        self.strategy = strategy
        self.risk = desks.RiskDesk.from_dict(rt(self.risk.to_dict()), LIMITS.for_account("paper"), SYMBOLS)
        ex = desks.ExecutionDesk(self.a["exec_cfg"], MIN, self.execution.source)
        for sym in SYMBOLS:
            ex.set_symbol_state(sym, rt(self.execution.symbol_state(sym)))
            if sym in self.execution.memory:  # a table gives its entries back in no particular order
                ex.restore_memory(sym, {int(b): e for b, e in reversed(rt(self.execution.memory[sym]).items())})
        self.execution = ex
        self.portfolio = desks.PortfolioDesk.from_dict(rt(self.portfolio.to_dict()))


def by_id(events):
    return sorted(json.dumps(e, sort_keys=True) for e in events)


def test_sequential_chain_trades_every_reason_and_is_schema_exact():
    out = sequential(streams(60, crash_at=22))
    for kind, schema in (("signal", "signal"), ("mark", "mark"), ("order", "order"), ("rejection", "order_rejected"),
                         ("fill", "fill"), ("position", "position"), ("equity", "equity"),
                         ("risk_state", "risk_state")):
        assert out[kind], kind
        for e in out[kind]:
            assert_schema(schema, e)
        ids = [e["event_id"] for e in out[kind]]
        assert len(ids) == len(set(ids)), kind
    reasons = {r["reason_code"] for r in out["rejection"]}
    assert reasons == {"ORDER_RATE", "MAX_GROSS_EXPOSURE", "DAILY_LOSS_LIMIT"}
    [halt] = out["risk_state"]
    assert (halt["trading_state"], halt["reason"]) == ("HALTED", "DAILY_LOSS_LIMIT")
    assert halt["daily_pnl"] <= -3000 and halt["ts"] == T0 + 24 * MIN  # at the mark after the 2nd drop
    # after the kill switch every intent is rejected, with the halt's reason
    after = [r for r in out["rejection"] if r["ts"] > halt["ts"]]
    assert after and {r["reason_code"] for r in after} == {"DAILY_LOSS_LIMIT"}
    assert not [o for o in out["order"] if o["ts"] > halt["ts"]]
    # each order fills once, at the first tick after it (ask for buys, bid for sells, + slippage)
    fills = {f["order_id"]: f for f in out["fill"]}
    assert len(fills) == len(out["fill"]) == len(out["order"])
    for o in out["order"]:
        f = fills[o["event_id"]]
        assert f["ts"] == o["ts"] + 1
        k = SYMBOLS.index(o["symbol"])
        base = price(k, (o["ts"] - T0) // MIN, 22)
        assert f["price"] == ((base + 0.02) * (1 + 2e-4) if o["side"] == "BUY" else (base - 0.02) * (1 - 2e-4))


@pytest.mark.parametrize("seed", range(8))
def test_any_interleaving_and_restarts_give_the_sequential_events(seed):
    st = streams(40, crash_at=22)
    want = sequential(st)
    rng = random.Random(seed)
    agents = Agents(st)
    steps = 0
    while agents.step(rng):
        steps += 1
        if rng.random() < 0.01:
            agents.restart()
            agents.redeliver(rng)
    got = agents.out
    assert steps > 1000
    # the risk and portfolio stages: the same events in the same order
    for kind in ("order", "rejection", "risk_state", "position", "equity"):
        assert json.dumps(got[kind]) == json.dumps(want[kind]), kind
    # strategy and execution: the same events (their order across symbols is the arrival order)
    for kind in ("signal", "mark", "fill"):
        assert by_id(got[kind]) == by_id(want[kind]), kind
    assert want["rejection"] and want["risk_state"] and len(want["fill"]) == len(want["order"])


def test_bar_only_market_data_fills_at_the_next_bar_open():
    from trading_events import bar
    st = streams(20)
    for sym in SYMBOLS:
        ticks = st.pop(("tick", sym))
        st[("bar", sym)] = [bar(sym, t["ts"] - 1 + MIN, t["price"] + 0.5, t["price"]) for t in ticks[::3]]
    out = sequential(st, market_data="bars")
    assert out["order"] and len(out["fill"]) == len(out["order"])
    bars = {(b["symbol"], b["window_start"]): b for (k, _), evs in st.items() if k == "bar" for b in evs}
    for o, f in zip(out["order"], sorted(out["fill"], key=lambda f: out["order"].index(
            next(o for o in out["order"] if o["event_id"] == f["order_id"])))):
        b = bars[(o["symbol"], o["ts"])]  # the bar of the window that starts at the order
        assert (f["ts"], f["order_id"]) == (b["ts"], o["event_id"])
        assert f["price"] == b["open"] * (1 + 2e-4 if o["side"] == "BUY" else 1 - 2e-4)


def test_nothing_is_decided_before_every_universe_symbol_has_progressed():
    st = streams(10)
    del st[("prediction", "MSFT")]  # MSFT is never scored: it holds the account back
    out = sequential(st)
    assert out["signal"] and not out["order"] and not out["rejection"] and not out["position"]
    chain = desks.run_trading_chain([], **chain_args())
    assert chain.risk.waiting_for() == list(SYMBOLS)


def test_kill_switch_holds_until_reset_and_reset_reopens_trading():
    st = streams(60, crash_at=22)
    events = sorted(((ev["ts"], kind, ev["symbol"], i), kind, ev)
                    for (kind, _), evs in st.items() for i, ev in enumerate(evs))
    chain = desks.TradingChain(**chain_args())
    reset_at = None
    for key, kind, ev in events:
        chain.feed(kind, ev)
        if reset_at is None and chain.risk.risk.trading_state == "HALTED" and key[0] >= T0 + 30 * MIN:
            reset_at = key[0]
            ctl = {"event_id": "ctl-1", "account": "paper", "ts": 1, "state": "ACTIVE", "operator": "ops"}
            chain.feed("risk_control", ctl)
            chain.feed("risk_control", ctl)  # a redelivered command applies once
    halted, active = chain.outputs["risk_state"]
    assert halted["trading_state"] == "HALTED" and halted["ts"] < reset_at
    assert (active["trading_state"], active["reason"], active["event_id"]) == ("ACTIVE", None, "state:paper:ctl-1")
    # between the two, every decision was a rejection; after the reset orders flow again
    decided = chain.outputs["order"] + chain.outputs["rejection"]
    between = [d for d in decided if halted["ts"] < d["ts"] <= active["ts"]]
    assert between and all(d.get("reason_code") == "DAILY_LOSS_LIMIT" for d in between)
    assert [o for o in chain.outputs["order"] if o["ts"] > active["ts"]]


def test_an_order_fills_from_the_newest_window_even_after_a_tick_opened_an_older_one():
    """A tick within grace may open an older window after a newer one: the desk still
    searches the memory up to its newest window (restored memory is in no order either)."""
    from test_execution import order

    for restored in (False, True):
        ex = desks.ExecutionDesk(ExecConfig(slippage_bps=0.0), MIN, "ticks")
        ex.on_market("tick", tick("AAPL", T0 + 3 * MIN + 5, price=103.0))  # window T0 + 3 min
        ex.on_market("tick", tick("AAPL", T0 + MIN + 5, price=101.0))  # an older window, opened later
        if restored:
            again = desks.ExecutionDesk(ExecConfig(slippage_bps=0.0), MIN, "ticks")
            again.restore_memory("AAPL", dict(reversed(ex.memory["AAPL"].items())))
            ex = again
        # the first window after the order has no data: the fill comes from the newest one
        [fill] = ex.on_order(order("AAPL", T0 + MIN + 10, "BUY", 1.0))
        assert (fill["ts"], fill["price"]) == (T0 + 3 * MIN + 5, 103.0)
        ex.forget_symbol("AAPL")
        assert ex.on_order(order("AAPL", T0 + 4 * MIN, "BUY", 1.0)) == [] and not ex.memory

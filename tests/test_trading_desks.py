"""The trading desks (ticktape.core.desks): the in-process chain equals any interleaving of
the agents' channels, restarts included; predictions alone decide, so feed order across
symbols does not matter; the ordering rule and its bounded wait; the kill switch and reset."""

from __future__ import annotations

import json
import random
from collections import deque

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as hst
from trading_events import MIN, SEC, T0, assert_schema, fill, prediction, signal, tick

from ticktape.core import desks
from ticktape.core.execution import ExecConfig
from ticktape.core.risk import RiskLimits
from ticktape.core.strategy import StrategyConfig
from ticktape.core.trading import iso

SYMBOLS = ("AAPL", "KO", "MSFT")
LIMITS_FILE = {
    "defaults": {
        "initial_state": "ACTIVE",
        "max_gross_exposure": 25_000,
        "daily_loss_limit": 3000,
        "max_orders_per_symbol": 3,
        "max_orders_total": 100,
        "rate_window_s": 600,
        "stale_after_s": 120,
        "symbol_defaults": {
            "max_position_qty": 5000,
            "max_position_notional": 100_000,
            "max_order_notional": 100_000,
            "price_collar_pct": 5,
        },
    }
}
LIMITS = RiskLimits.from_dict(LIMITS_FILE)
# the same configuration as worker settings
ENV = {
    "SYMBOLS": " ".join(SYMBOLS),
    "STRATEGY_MIN_HOLD_BARS": "2",
    "STRATEGY_NOTIONAL": "10000",
    "EXEC_SLIPPAGE_BPS": "2",
    "STARTING_CASH": "100000",
    "TRADING_ACCOUNT": "paper",
    "STRATEGY_INTERVAL": "1m",
}


def chain_args(market_data="ticks"):
    return dict(
        strategy_cfg=StrategyConfig(min_hold_bars=2, notional=10_000.0),
        limits=LIMITS,
        exec_cfg=ExecConfig(slippage_bps=2.0),
        starting_cash=100_000.0,
        universe=SYMBOLS,
        width_us=MIN,
        market_data=market_data,
    )


def price(k, i, crash_at):
    p = 100.0 + 40 * k + 0.3 * ((i * (k + 3)) % 11 - 5) + 0.01 * i
    return p * (0.8 ** max(0, i - crash_at) if k == 0 else 1.0)  # AAPL crashes (while held long)


def streams(n_bars, crash_at=10**9):
    """Per (input, symbol) streams, each in ts order, as the topics deliver them."""
    out = {}
    for k, sym in enumerate(SYMBOLS):
        ticks, preds = [], []
        for i in range(n_bars):
            ts = T0 + i * MIN
            close = price(k, i, crash_at)
            for j, dt in enumerate((1, MIN // 3, MIN // 2)):  # ticks in the window after the bar
                p = close + 0.05 * j
                ticks.append(tick(sym, ts + dt, price=p, bid=p - 0.02, ask=p + 0.02, seq=j))
            preds.append(prediction(sym, ts, ((i * 7 + k * 5) % 20) / 19, close=close))
        out[("tick", sym)], out[("prediction", sym)] = ticks, preds
    return out


def sequential(st, market_data="ticks"):
    """Inputs one stream-time step at a time (the in-process chain)."""
    events = sorted(
        ((ev["ts"], kind, ev["symbol"], i), kind, ev) for (kind, _), evs in st.items() for i, ev in enumerate(evs)
    )
    return desks.run_trading_chain(((kind, ev) for _, kind, ev in events), **chain_args(market_data)).outputs


class Agents:
    """The four desks behind channels with arbitrary delivery order, as Kafka gives them:
    order is kept per channel (a writer into a partition), not across channels; after a
    restart a channel may deliver its last items again."""

    def __init__(self, st, market_data="ticks"):
        a = chain_args(market_data)
        self.a = a
        self.strategy = desks.StrategyDesk(a["strategy_cfg"])
        self.risk = desks.RiskDesk(
            "paper",
            LIMITS.for_account("paper"),
            a["starting_cash"],
            SYMBOLS,
            fill_lead_us=desks.fill_lead_us(market_data, MIN),
        )
        self.execution = desks.ExecutionDesk(a["exec_cfg"], MIN, market_data)
        self.portfolio = desks.PortfolioDesk("paper", a["starting_cash"])
        self.channels = {key: deque(evs) for key, evs in st.items()}
        self.pending_table: dict[str, list] = {}  # the risk agent's table: one entry per buffered event
        self.delivered: dict[tuple, deque] = {}
        self.out = {k: [] for k in ("signal", "mark", "order", "rejection", "fill", "position", "equity", "risk_state")}

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
        if kind == "prediction":
            sym = item["symbol"]
            for k, e in self.strategy.on_prediction(item):
                self.out[k].append(e)
                self.push(("account", "strategy", sym), (k, e))
            progress = self.strategy.progress(sym)
            if progress is not None:
                self.push(("account", "strategy", sym), ("progress", {"symbol": sym, "ts": progress}))
        elif kind in ("tick", "order"):
            fills = self.execution.on_market("tick", item)[0] if kind == "tick" else self.execution.on_order(item)
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
                self.decided(self.risk.add(k, e))
            self.decided(self.risk.release())
            added, removed = self.risk.take_pending_changes()
            for eid in removed:
                self.pending_table.pop(eid, None)
            self.pending_table.update((p[3], p) for p in added)
        else:  # ledger
            for k, e in self.portfolio.on_ledger(*item):
                self.out[k].append(e)
        return True

    def decided(self, decisions):
        for k2, e2 in decisions:
            if k2 == "order":
                self.out["order"].append(e2)
                self.push(("order", e2["symbol"]), e2)
            elif k2 in ("fill", "mark", "late_fill"):
                self.push(("ledger",), (k2, e2))
            else:
                self.out[k2].append(e2)

    def redeliver(self, rng):
        """Kafka after a crash: the last items of each channel come again (the state is newer)."""
        for channel, items in self.delivered.items():
            again = list(items)[len(items) - rng.randint(0, len(items)) :]
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
        saved = rt(self.risk.to_dict())
        assert "pending" not in saved  # buffered events are saved one per table entry
        pending = rt(list(reversed(self.pending_table.values())))  # a table gives them in no order
        assert sorted(map(tuple, pending)) == sorted(map(tuple, rt(self.risk.pending)))
        self.risk = desks.RiskDesk.from_dict(saved, LIMITS.for_account("paper"), SYMBOLS, pending)
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
    for kind, schema in (
        ("signal", "signal"),
        ("mark", "mark"),
        ("order", "order"),
        ("rejection", "order_rejected"),
        ("fill", "fill"),
        ("position", "position"),
        ("equity", "equity"),
        ("risk_state", "risk_state"),
    ):
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
    for o, f in zip(
        out["order"],
        sorted(
            out["fill"],
            key=lambda f: out["order"].index(next(o for o in out["order"] if o["event_id"] == f["order_id"])),
        ),
    ):
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
    events = sorted(
        ((ev["ts"], kind, ev["symbol"], i), kind, ev) for (kind, _), evs in st.items() for i, ev in enumerate(evs)
    )
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


# --- predictions alone: no join, so feed order across symbols does not matter ------------


def test_a_prediction_without_close_is_refused_naming_the_event():
    desk = desks.StrategyDesk(StrategyConfig(min_hold_bars=0))
    pred = prediction("AAPL", T0, 0.9, close=123.0)
    v1 = {k: v for k, v in pred.items() if k not in ("close", "volatility_20")}  # Prediction v1
    for bad in (v1, {**pred, "close": None}, {**pred, "close": 0.0}, {**pred, "close": float("nan")}):
        with pytest.raises(ValueError, match=rf"^prediction {pred['event_id']}: close=\S+ is not a price"):
            desk.on_prediction(bad)
    assert desk.progress("AAPL") is None and desk.symbol_state("AAPL") is None  # nothing advanced
    [(k1, m), (k2, sig)] = desk.on_prediction(pred)
    assert (k1, k2) == ("mark", "signal")
    assert m == {"event_id": f"mark:paper:AAPL:1m:{T0}", "account": "paper", "symbol": "AAPL", "ts": T0, "price": 123.0}
    assert (sig["reference_price"], sig["target_position"]) == (123.0, 81.0)
    assert_schema("mark", m)
    assert_schema("signal", sig)
    assert desk.progress("AAPL") == T0
    assert desk.on_prediction(pred) == [] and desk.on_prediction(prediction("AAPL", T0, 0.1, interval="5m")) == []
    # the chain refuses it the same way, and takes no indicator sets any more
    chain = desks.TradingChain(**chain_args())
    with pytest.raises(ValueError, match=rf"^prediction {pred['event_id']}: close=None is not a price"):
        chain.feed("prediction", v1)
    with pytest.raises(ValueError, match="the trading chain takes no 'indicator_set' events"):
        chain.feed("indicator_set", {"symbol": "AAPL", "ts": T0})


def symbol_streams(seed: int, n_bars: int) -> dict[str, list[list[tuple[str, dict]]]]:
    """Per symbol, per bar: its Prediction (the model skips some bars) then the tick after it."""
    rng = random.Random(seed)
    out = {}
    for k, sym in enumerate(SYMBOLS):
        close, density, bars_ = 100.0 + 40 * k, rng.choice((1.0, 0.5, 0.1)), []
        for i in range(n_bars):
            close = max(1.0, close * (1 + rng.gauss(0, 0.002)))
            ts = T0 + i * MIN
            items = []
            if rng.random() < density:
                p = round(close, 2)
                items = [
                    ("prediction", prediction(sym, ts, rng.random(), close=p, volatility=0.2)),
                    ("tick", tick(sym, ts + 1, price=p, bid=p - 0.01, ask=p + 0.01)),
                ]
            bars_.append(items)
        out[sym] = bars_
    return out


def fed_shifted(streams_, lead: str, shift: int, rng: random.Random | None) -> list[tuple[str, dict]]:
    """Bar i of every symbol at step i, but ``lead``'s bar i at step i - shift (``shift`` bars
    ahead in feed order); within a step the symbols come in ``rng``'s order (sorted if None)."""
    n = len(streams_[lead])
    out = []
    for step in range(-shift, n):
        syms = list(SYMBOLS)
        if rng is not None:
            rng.shuffle(syms)
        for sym in syms:
            i = step + shift if sym == lead else step
            if 0 <= i < n:
                out += streams_[sym][i]
    return out


def per_symbol(events):
    out = {}
    for e in events:
        out.setdefault(e["symbol"], []).append(e)
    return out


def strategy_outputs(events):
    """(Signals and Marks per symbol, the desk's symbol states) of a StrategyDesk fed ``events``."""
    desk, out = desks.StrategyDesk(StrategyConfig(min_hold_bars=2, sizing="vol_target")), []
    for kind, ev in events:
        if kind == "prediction":
            out += desk.on_prediction(ev)
    return (
        {k: per_symbol(e for kk, e in out if kk == k) for k in ("signal", "mark")},
        {sym: (desk.symbol_state(sym), desk.progress(sym)) for sym in SYMBOLS},
    )


@settings(max_examples=25, deadline=None)
@example(seed=1, shift=10_000, extra=300, lead="KO", order_seed=1)  # the whole range, every run
@given(
    seed=hst.integers(0, 2**16),
    shift=hst.integers(0, 10_000),
    extra=hst.integers(20, 300),
    lead=hst.sampled_from(SYMBOLS),
    order_seed=hst.integers(0, 2**16),
)
def test_one_symbol_fed_far_ahead_gives_the_same_signals_and_marks(seed, shift, extra, lead, order_seed):
    """Predictions carry their own price: a symbol's stream fed 0..10,000 bars before the
    others' (and the symbols interleaved in any order within a step) gives exactly the same
    Signals and Marks, per symbol in the same order, and the same per-symbol state."""
    st_ = symbol_streams(seed, shift + extra)
    want, want_state = strategy_outputs(fed_shifted(st_, lead, 0, None))
    got, got_state = strategy_outputs(fed_shifted(st_, lead, shift, random.Random(order_seed)))
    assert got == want
    assert got_state == want_state
    assert sum(map(len, want["mark"].values())) == sum(1 for bars_ in st_.values() for b in bars_ if b)


@settings(max_examples=10, deadline=None)
@example(seed=2, shift=1000, extra=100, lead="AAPL", order_seed=2)
@given(
    seed=hst.integers(0, 2**16),
    shift=hst.integers(0, 1000),
    extra=hst.integers(20, 300),
    lead=hst.sampled_from(SYMBOLS),
    order_seed=hst.integers(0, 2**16),
)
def test_one_symbol_fed_ahead_gives_the_same_chain_outputs(seed, shift, extra, lead, order_seed):
    """The whole chain with one symbol's predictions and ticks up to 1,000 bars ahead of the
    others': the same Signals, Marks and Fills per symbol, and (the risk desk waiting for every
    symbol) the same decisions, ledger and portfolio events in the same order.  (Up to 1,000
    bars: execution keeps a symbol's market data for MEMORY_US = 1 day = 1,440 bars of event
    time; an order whose next tick has been forgotten fills at the oldest data kept.)"""
    st_ = symbol_streams(seed, shift + extra)
    want = desks.run_trading_chain(fed_shifted(st_, lead, 0, None), **chain_args()).outputs
    got = desks.run_trading_chain(fed_shifted(st_, lead, shift, random.Random(order_seed)), **chain_args()).outputs
    for kind in ("signal", "mark", "fill"):
        assert per_symbol(got[kind]) == per_symbol(want[kind]), kind
    for kind in ("order", "rejection", "risk_state", "position", "equity"):
        assert got[kind] == want[kind], kind
    assert want["mark"] and len(want["fill"]) == len(want["order"])


# --- the risk desk's bounded wait (RISK_IDLE_MS, RISK_MAX_PENDING) -------------------------

ACCOUNT_LIMITS = LIMITS.for_account("paper")
NO_LATE = {"signal": 0, "mark": 0, "fill": 0}


def mark(symbol, ts, price=100.0):
    return {"event_id": f"mark:paper:{symbol}:1m:{ts}", "account": "paper", "symbol": symbol, "ts": ts, "price": price}


def risk_desk(idle_s=0, **kw):
    return desks.RiskDesk("paper", ACCOUNT_LIMITS, 100_000.0, SYMBOLS, idle_us=idle_s * SEC, **kw)


def put(desk, kind, ev):
    """As the risk agent takes an event: buffer it, then its symbol's progress (signals and
    marks come with the strategy's progress), then release."""
    out = desk.add(kind, ev)
    if kind != "fill":
        desk.on_progress(ev["symbol"], ev["ts"])
    return out + desk.release()


def ids(decisions):
    return [(k, e["event_id"]) for k, e in decisions]


def canonical(items):
    """(kind, event) pairs in the canonical order, as (released kind, event id)."""
    out = []
    for kind, ev in sorted(items, key=lambda x: desks.canonical_key(*x)):
        out.append(("order", f"ord:{ev['event_id']}") if kind == "signal" else (kind, ev["event_id"]))
    return out


def silent_ko(desk, seconds=60):
    """Every symbol marks T0, then KO falls silent while AAPL and MSFT mark every second."""
    fed, out = [], []
    for sym in SYMBOLS:
        fed.append(("mark", mark(sym, T0)))
        out += put(desk, *fed[-1])
    for i in range(1, seconds + 1):
        for sym in ("AAPL", "MSFT"):
            fed.append(("mark", mark(sym, T0 + i * SEC)))
            out += put(desk, *fed[-1])
    return fed, out


def test_bounded_wait_releases_past_a_silent_symbol_and_takes_it_back_in_canonical_order():
    desk, waiting = risk_desk(idle_s=10), risk_desk(idle_s=0)
    fed, out = silent_ko(desk)
    _, held = silent_ko(waiting)
    # idle_us = 0: KO holds the account at its last progress
    assert ids(held) == canonical(fed[:3]) and waiting.waiting_for() == ["KO"] and waiting.idle() == []
    # idle_us = 10 s: the others' events are released up to just below 10 s behind the frontier (T0 + 60 s)
    assert desk.frontier == T0 + 60 * SEC
    assert out[-1][1]["ts"] == T0 + 49 * SEC and out[-1][1]["event_id"] == mark("MSFT", T0 + 49 * SEC)["event_id"]
    assert ids(out) == canonical([f for f in fed if f[1]["ts"] < T0 + 50 * SEC])
    assert len(desk.pending) == 22  # AAPL and MSFT, T0 + 50 .. 60 s
    assert desk.idle() == ["KO"] and desk.waiting_for() == ["AAPL", "MSFT"]
    # KO resumes in sync with the others (a signal and its fill included): nothing is late, and
    # the whole run comes out in canonical order, exactly as the desk that waits for every symbol
    more = []
    for i in range(61, 71):
        for sym in SYMBOLS:
            more.append(("mark", mark(sym, T0 + i * SEC)))
    sig = signal("KO", T0 + 62 * SEC, 10.0, 100.0)
    more.insert(more.index(("mark", mark("MSFT", T0 + 62 * SEC))), ("signal", sig))
    for d, sink in ((desk, out), (waiting, held)):
        for kind, ev in more:
            for k, e in put(d, kind, ev):
                sink.append((k, e))
                if k == "order":  # the fill comes back right after the order
                    f = fill("KO", e["ts"] + 1, "BUY", 10.0, 100.0)
                    f["order_id"] = e["event_id"]
                    sink += put(d, "fill", f)
    ko_fill = fill("KO", T0 + 62 * SEC + 1, "BUY", 10.0, 100.0)
    want = canonical(fed + more + [("fill", ko_fill)])
    assert ("order", f"ord:{sig['event_id']}") in want and ("fill", ko_fill["event_id"]) in want
    assert ids(out) == ids(held) == want
    assert desk.late == waiting.late == NO_LATE and desk.forced == 0
    assert desk.idle() == [] and not desk.pending and not desk.open_orders


def test_a_signal_more_than_idle_behind_is_rejected_as_stale_and_a_late_mark_dropped():
    desk = risk_desk(idle_s=10)
    silent_ko(desk)  # processed up to T0 + 50 s
    ko_md = desk.risk.md_ts["KO"]
    before = desk.to_dict()
    assert desk.add("mark", mark("KO", T0 + 30 * SEC)) == []  # dropped
    assert desk.late == {"signal": 0, "mark": 1, "fill": 0} and desk.risk.md_ts["KO"] == ko_md
    sig = signal("KO", T0 + 30 * SEC, 25.0, 100.0)
    [(kind, rej)] = desk.add("signal", sig)
    assert kind == "rejection"
    assert rej == {
        "event_id": f"rej:{sig['event_id']}",
        "account": "paper",
        "symbol": "KO",
        "ts": T0 + 30 * SEC,
        "side": "BUY",
        "quantity": 25.0,
        "reference_price": 100.0,
        "reason_code": "STALE_MARKET_DATA",
        "detail": f"signal at {iso(T0 + 30 * SEC)} came after the account had processed events "
        f"up to {iso(T0 + 49 * SEC)}: its symbol was idle (more than RISK_IDLE_MS behind)",
        "signal_id": sig["event_id"],
    }
    assert_schema("order_rejected", rej)
    assert desk.late == {"signal": 1, "mark": 1, "fill": 0}
    assert desk.add("signal", dict(sig)) == [] and desk.late["signal"] == 1  # a redelivery: nothing
    # already on target: nothing to reject, nothing counted
    assert desk.add("signal", signal("KO", T0 + 31 * SEC, 0.0, 100.0, n=1)) == [] and desk.late["signal"] == 1
    # the account is as it was (but for the counts and the signal ids it remembers): nothing
    # committed, no price taken, nothing buffered, nothing released
    after = desk.to_dict()
    for d in (before, after):
        del d["late"], d["risk"]["recent_signals"]
    assert after == before and desk.risk.committed.get("KO", 0.0) == 0.0 and not desk.open_orders
    assert desk.release() == [] and len(desk.pending) == 22


def test_a_late_fill_of_an_open_order_is_applied_where_it_arrives():
    desk, pf = risk_desk(idle_s=10), desks.PortfolioDesk("paper", 100_000.0)
    ex = desks.ExecutionDesk(ExecConfig(slippage_bps=0.0), MIN, "ticks")
    out = []

    def feed(kind, ev):
        for k, e in put(desk, kind, ev):
            out.append((k, e))
            if k == "order":
                assert ex.on_order(e) == []  # its market data is slow: the fill waits

    feed("mark", mark("AAPL", T0))
    feed("signal", signal("AAPL", T0, 50.0, 100.0))  # on a bar boundary, as every strategy order
    feed("mark", mark("KO", T0))
    feed("mark", mark("MSFT", T0))
    for i in range(1, 61):  # every symbol advances 60 s
        for sym in SYMBOLS:
            feed("mark", mark(sym, T0 + i * SEC))
    [order] = [e for k, e in out if k == "order"]
    assert order["ts"] == T0 and desk.open_orders == {order["event_id"]: T0}
    # the open order holds the account back only to just below the frontier - idle_us
    assert out[-1][1]["ts"] == T0 + 49 * SEC and desk.last_key[0] == T0 + 49 * SEC
    [f] = ex.on_market("tick", tick("AAPL", T0 + 1, price=99.0, bid=98.9, ask=99.1))[0]
    assert (f["order_id"], f["ts"], f["price"]) == (order["event_id"], T0 + 1, 99.1)
    assert desk.add("fill", f) == [("late_fill", f)]
    assert desk.late == {"signal": 0, "mark": 0, "fill": 1} and desk.open_orders == {}
    assert desk.risk.portfolio.positions["AAPL"].qty == 50.0  # risk's own fold has it
    assert desk.add("fill", dict(f)) == [] and desk.late["fill"] == 1  # a redelivery: nothing
    # the portfolio applies it out of the canonical order, once
    for k, e in out:
        if k in ("fill", "mark"):
            pf.on_ledger(k, e)
    last_key = pf.last_key
    [(k1, pos), (k2, eq)] = pf.on_ledger("late_fill", f)
    assert (k1, k2) == ("position", "equity") and pos["quantity"] == 50.0 and pos["ts"] == T0 + 1
    assert pf.on_ledger("late_fill", dict(f)) == [] and pf.last_key == last_key
    assert pf.pf.cash == desk.risk.portfolio.cash == 100_000.0 - 50 * 99.1 - f["commission"]
    assert desks.PortfolioDesk.from_dict(json.loads(json.dumps(pf.to_dict()))).on_ledger("late_fill", f) == []
    # with nothing open any more, every symbol's progress (T0 + 60 s) is the barrier again
    assert ids(put(desk, "mark", mark("KO", T0 + 61 * SEC))) == canonical(
        [("mark", mark(sym, T0 + i * SEC)) for i in range(50, 61) for sym in SYMBOLS]
    )


def test_the_buffer_stays_within_max_pending_and_counts_forced_releases():
    desk = risk_desk(idle_s=0, max_pending=5)  # KO never progresses: only the bound releases
    fed, out = [], []
    for i in range(20):
        for sym in ("AAPL", "MSFT"):
            fed.append(("mark", mark(sym, T0 + i * SEC)))
            out += put(desk, *fed[-1])
            assert len(desk.pending) <= 5
    assert desk.waiting_for() == ["KO"]
    assert len(desk.pending) == 5 and desk.forced == len(out) == 35
    assert ids(out) == canonical(fed)[:35]  # the oldest first, in canonical order
    assert [p[3] for p in desk.pending] == [eid for _, eid in canonical(fed)[35:]]
    # what then sorts before the forced ones is late
    assert desk.add("mark", mark("KO", T0)) == [] and desk.late["mark"] == 1
    [(kind, rej)] = desk.add("signal", signal("KO", T0 + SEC, 5.0, 100.0))
    assert (kind, rej["reason_code"], desk.late["signal"]) == ("rejection", "STALE_MARKET_DATA", 1)
    # once KO progresses, the rest is released normally (not forced)
    assert ids(put(desk, "mark", mark("KO", T0 + 30 * SEC))) == canonical(fed)[35:]
    assert desk.forced == 35 and [p[3] for p in desk.pending] == [mark("KO", T0 + 30 * SEC)["event_id"]]


def test_desk_state_leaves_the_buffer_out_and_restores_with_it():
    bounds = {"idle_us": 10 * SEC, "max_pending": 50}
    desk = risk_desk(idle_s=10, max_pending=50)
    table: dict[str, list] = {}  # the agent's table: one entry per buffered event

    def save():
        added, removed = desk.take_pending_changes()
        for eid in removed:
            table.pop(eid, None)
        table.update((p[3], p) for p in added)

    for sym in SYMBOLS:
        put(desk, "mark", mark(sym, T0))
    put(desk, "signal", signal("AAPL", T0, 40.0, 100.0))  # an order whose fill has not come yet
    save()
    for i in range(1, 31):  # KO falls silent
        for sym in ("AAPL", "MSFT"):
            put(desk, "mark", mark(sym, T0 + i * SEC))
    desk.add("mark", mark("KO", T0 + SEC))  # a late mark
    save()
    # a batch of input buffered, not yet released (the agent releases once per batch)
    for sym in ("AAPL", "MSFT"):
        desk.add("mark", mark(sym, T0 + 31 * SEC))
        desk.on_progress(sym, T0 + 31 * SEC)
    save()
    assert desk.open_orders and desk.pending and desk.late["mark"] == 1
    rt = lambda x: json.loads(json.dumps(x))  # noqa: E731
    saved = rt(desk.to_dict())
    assert "pending" not in saved
    assert sorted(table) == sorted(p[3] for p in desk.pending)
    restored = desks.RiskDesk.from_dict(saved, ACCOUNT_LIMITS, SYMBOLS, rt(list(reversed(table.values()))), **bounds)
    assert restored.to_dict() == desk.to_dict()
    assert restored.pending == desk.pending
    assert (restored.frontier, restored.idle(), restored.waiting_for()) == (
        desk.frontier,
        desk.idle(),
        desk.waiting_for(),
    )
    assert (restored.late, restored.forced) == (desk.late, desk.forced)
    # an older state had its buffer inside: it loads the same
    older = desks.RiskDesk.from_dict({**saved, "pending": rt(desk.pending)}, ACCOUNT_LIMITS, SYMBOLS, **bounds)
    assert older.to_dict() == desk.to_dict() and older.pending == desk.pending
    # and all three go on exactly as the original: first the release of that batch
    released = [json.dumps(d.release()) for d in (desk, restored, older)]
    assert released[0] == released[1] == released[2]
    assert [e["ts"] for k, e in json.loads(released[0])] == [T0 + 20 * SEC] * 2  # to just below frontier - idle_us
    order_id = next(iter(desk.open_orders))
    rest = [("mark", mark(s, T0 + i * SEC)) for i in range(32, 50) for s in SYMBOLS]
    f = fill("AAPL", T0 + 1, "BUY", 40.0, 100.0)  # late: applied where it arrives
    f["order_id"] = order_id
    rest.insert(7, ("fill", f))
    runs = []
    for d in (desk, restored, older):
        runs.append(json.dumps([x for kind, ev in rest for x in put(d, kind, dict(ev))]))
    assert runs[0] == runs[1] == runs[2] and len(json.loads(runs[0])) > 40
    assert ["late_fill", f] in json.loads(runs[0])  # the restored open order takes its late fill
    assert restored.to_dict() == desk.to_dict() == older.to_dict()


def test_an_event_exactly_idle_us_behind_the_frontier_is_not_late():
    desk = risk_desk(idle_s=10)
    silent_ko(desk)  # frontier T0 + 60 s; released up to MSFT's mark at T0 + 49 s
    # KO resumes exactly 10 s (= idle_us, not more) behind the frontier
    desk.add("mark", mark("KO", T0 + 50 * SEC))
    assert desk.late == NO_LATE


def test_with_a_clock_a_symbol_is_idle_only_once_it_stood_still_that_long():
    """The agent passes its clock: a replay's skew (KO far behind in event time, but
    moving) makes nothing idle; a KO that stands still for idle_us of that clock is."""
    desk = risk_desk(idle_s=10)
    clock = 1000.0
    for sym in SYMBOLS:
        desk.add("mark", mark(sym, T0))
        desk.on_progress(sym, T0, clock)
    assert desk.release(clock) and desk.last_key[0] == T0
    for i in range(1, 61):  # AAPL and MSFT run 60 s ahead in event time within 3 s of the clock
        clock += 0.05
        for sym in ("AAPL", "MSFT"):
            desk.add("mark", mark(sym, T0 + i * SEC))
            desk.on_progress(sym, T0 + i * SEC, clock)
        if i % 20 == 0:  # KO moves too, slowly
            desk.add("mark", mark("KO", T0 + i // 20 * SEC))
            desk.on_progress("KO", T0 + i // 20 * SEC, clock)
        desk.release(clock)
    assert desk.idle(clock) == [] and desk.last_key[0] == T0 + 3 * SEC  # held at KO's progress
    assert desk.idle() == ["KO"]  # without a clock (in process) the event-time rule alone
    clock += 10.0  # KO stands still for idle_us on the clock
    assert desk.idle(clock) == ["KO"]
    out = desk.release(clock)
    assert out[-1][1]["ts"] == T0 + 49 * SEC and desk.late == NO_LATE


def test_with_a_clock_a_half_full_buffer_makes_a_lagging_symbol_idle_though_it_moves():
    desk = risk_desk(idle_s=10, max_pending=200)
    clock = 1000.0
    for sym in SYMBOLS:
        desk.add("mark", mark(sym, T0))
        desk.on_progress(sym, T0, clock)
    desk.release(clock)
    for i in range(1, 200):  # KO moves every step, but falls ever further behind
        clock += 0.01
        for sym in ("AAPL", "MSFT"):
            desk.add("mark", mark(sym, T0 + i * SEC))
            desk.on_progress(sym, T0 + i * SEC, clock)
        desk.on_progress("KO", T0 + i * SEC // 10, clock)
        desk.release(clock)
        assert len(desk.pending) <= 100 + 2  # idle once half full: never near the bound
    # nothing forced; the account went on far past KO (T0 + 19.9 s), which does not block it
    assert desk.forced == 0 and desk.progress["KO"] < T0 + 20 * SEC < T0 + 140 * SEC < desk.last_key[0]


def test_a_half_full_buffer_goes_past_open_orders_whose_fills_are_slow():
    """Orders approved in the same release hold the account back no longer than the
    floor once the buffer is half full: one release goes past them all (not one order
    time per release, which would leave a loaded account ever further behind)."""
    desk = risk_desk(idle_s=10, max_pending=400, fill_lead_us=SEC)
    n = 0
    for i in range(0, 61):
        for k, sym in enumerate(SYMBOLS):
            desk.add("mark", mark(sym, T0 + i * SEC))
            if i % 3 == k:  # a signal now and then, whose order gets no fill
                n += 1
                desk.add("signal", signal(sym, T0 + i * SEC, 10.0 * n, 100.0, n=n))
            desk.on_progress(sym, T0 + i * SEC, 1000.0)
    assert 200 <= len(desk.pending) < 400  # half full, not over the bound
    out = desk.release(1000.0)
    assert sum(k == "order" for k, _ in out) >= 5 and len(desk.open_orders) >= 5  # their fills never came
    assert desk.last_key[0] == T0 + 49 * SEC and desk.forced == 0  # to just below frontier - idle_us

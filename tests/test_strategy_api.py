"""ticktape.api: a strategy of your own in the strategy desk, loaded by STRATEGY /
STRATEGY_PARAMS; the built-in p_up hysteresis is one such strategy, unchanged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ticktape.api import (
    Bar,
    Order,
    PUpHysteresis,
    Strategy,
    StrategyError,
    StrategySpec,
    Target,
    load_strategy,
    strategy_config,
)
from ticktape.config import REPO_ROOT, ConfigError
from ticktape.config import settings as make_settings
from ticktape.core import desks
from ticktape.core.indicators import INDICATOR_NAMES
from ticktape.core.strategy import StrategyConfig
from test_trading_desks import chain_args
from trading_events import MIN, T0, assert_schema, prediction


def indicator_set(symbol, ts, close, interval="1m", **values):
    ind = {
        "event_id": f"{symbol}:{interval}:{ts - MIN}",
        "symbol": symbol,
        "interval": interval,
        "ts": ts,
        "close": close,
        "volume": 1000.0,
    }
    return ind | {name: values.get(name) for name in INDICATOR_NAMES}


class Steps(Strategy):
    """Trades a scripted list of decisions, one per bar; counts its calls (its state)."""

    name = "steps"
    state_fields = ("calls",)
    script: list = []

    def __init__(self, symbol, *, scale=1.0):
        super().__init__(symbol)
        self.scale, self.calls = scale, 0

    def on_bar(self, bar: Bar):
        self.calls += 1
        return self.script[self.calls - 1]


def spec(cls, **params) -> StrategySpec:
    return StrategySpec(cls, params, f"test_strategy_api:{cls.__name__}", "")


def feed(desk, events):
    return [out for ev in events for out in desk.on_input("indicator_set", ev)]


def test_targets_and_order_intents_become_signals_with_the_framework_target():
    Steps.script = [None, Target(10, "in"), Order("BUY", 5), Target(15.0), Order("SELL", 40, "flip"), None]
    desk = desks.StrategyDesk(StrategyConfig(), spec(Steps))
    assert desk.input == "indicator_set"
    out = feed(desk, [indicator_set("AAPL", T0 + i * MIN, 100.0 + i) for i in range(6)])
    marks = [e for k, e in out if k == "mark"]
    signals = [e for k, e in out if k == "signal"]
    assert [m["price"] for m in marks] == [100.0, 101.0, 102.0, 103.0, 104.0, 105.0]
    assert [(s["side"], s["quantity"], s["target_position"], s["reason"]) for s in signals] == [
        ("BUY", 10.0, 10.0, "in"),
        ("BUY", 5.0, 15.0, "target 15"),
        ("SELL", 40.0, -25.0, "flip"),
    ]
    assert signals[0] == {
        "event_id": f"sig:paper:AAPL:1m:{T0}",
        "account": "paper",
        "symbol": "AAPL",
        "ts": T0 + MIN,
        "side": "BUY",
        "quantity": 10.0,
        "target_position": 10.0,
        "reference_price": 101.0,
        "strategy": "steps",
        "reason": "in",
        "model_version": None,
    }
    assert_schema("signal", signals[0])
    assert desk.symbols["AAPL"].inst.target == -25.0 and desk.progress("AAPL") == T0 + 5 * MIN


def test_redeliveries_and_other_intervals_never_reach_the_hook():
    Steps.script = [Target(1)] * 3
    desk = desks.StrategyDesk(StrategyConfig(), spec(Steps))
    ev = indicator_set("AAPL", T0, 100.0)
    assert (
        len(feed(desk, [ev, ev, indicator_set("AAPL", T0 - MIN, 99.0), indicator_set("AAPL", T0 + MIN, 1.0, "5m")]))
        == 2
    )
    assert desk.symbols["AAPL"].inst.calls == 1
    assert desk.on_input("prediction", prediction("AAPL", T0 + MIN, 0.9)) == []  # not what it trades on
    with pytest.raises(ValueError, match="takes no 'prediction' events .its strategy trades on indicator_set"):
        desks.TradingChain(**chain_args() | {"strategy": spec(Steps)}).feed("prediction", prediction("AAPL", T0, 0.9))


def test_state_survives_a_restart_and_the_continuation_is_identical():
    Steps.script = [None, Target(3), None, Order("SELL", 3), Target(-2), None, Target(7)]
    events = [indicator_set("AAPL", T0 + i * MIN, 50.0 + i) for i in range(7)]
    straight = desks.StrategyDesk(StrategyConfig(), spec(Steps))
    want = feed(straight, events)
    first = desks.StrategyDesk(StrategyConfig(), spec(Steps))
    got = feed(first, events[:4])
    saved = json.loads(json.dumps(first.symbol_state("AAPL")))
    assert saved == {"ts": T0 + 3 * MIN, "t": 0.0, "s": {"calls": 4}}
    restored = desks.StrategyDesk(StrategyConfig(), spec(Steps))
    restored.set_symbol_state("AAPL", saved)
    got += feed(restored, events[3:])  # the last event before the restart is redelivered: dropped
    assert got == want and restored.symbol_state("AAPL") == straight.symbol_state("AAPL")


def test_a_state_saved_by_the_built_in_strategy_before_the_api_loads():
    desk = desks.StrategyDesk(StrategyConfig(min_hold_bars=0))
    old = {"s": {"direction": 1, "target": 100.0, "decisions": 7, "changed_at": 6, "last_pred_ts": T0}}
    desk.set_symbol_state("AAPL", old)
    assert desk.progress("AAPL") == T0 and desk.on_prediction(prediction("AAPL", T0, 0.1)) == []
    [_, (kind, sig)] = desk.on_prediction(prediction("AAPL", T0 + MIN, 0.5))
    assert (kind, sig["side"], sig["quantity"], sig["target_position"]) == ("signal", "SELL", 100.0, 0.0)


def test_the_default_strategy_is_the_built_in_one_event_for_event():
    s = make_settings(strategy_min_hold_bars=1, strategy_sizing="vol_target")
    loaded = load_strategy(s)
    assert (loaded.cls, loaded.path) == (PUpHysteresis, "ticktape.api:PUpHysteresis")
    assert loaded.params == {
        "enter_p": 0.6,
        "exit_p": 0.55,
        "sides": "long_short",
        "min_hold_bars": 1,
        "sizing": "vol_target",
        "notional": 10_000.0,
        "vol_target": 0.2,
        "max_vol_scale": 3.0,
        "lot_size": 1.0,
    }
    cfg = strategy_config(s)
    a, b = desks.StrategyDesk(cfg), desks.StrategyDesk(cfg, loaded)
    p_ups = [0.5, 0.7, 0.62, 0.3, 0.58, 0.2, 0.9, 0.45, 0.61, 0.1]
    preds = [
        prediction(sym, T0 + i * MIN, p, close=90.0 + i, volatility=0.1 * (1 + i % 3))
        for i, p in enumerate(p_ups)
        for sym in ("AAPL", "MSFT")
    ]
    outs = [[o for p in preds for o in d.on_prediction(p)] for d in (a, b)]
    assert outs[0] == outs[1] and sum(k == "signal" for k, _ in outs[0]) == 16
    assert {e["strategy"] for k, e in outs[0] if k == "signal"} == {"p_up_hysteresis"}
    assert a.symbol_state("AAPL") == b.symbol_state("AAPL")


class Tuple(Steps):
    state_fields = ("calls", "seen")

    def on_bar(self, bar):
        self.seen = (bar.close,)
        return None


class Huge(Steps):
    state_fields = ("calls", "closes")

    def on_bar(self, bar):
        self.closes = getattr(self, "closes", []) + [bar.close] * 5000  # never trimmed
        return None


class Broken(Steps):
    def on_bar(self, bar):
        return {"target": 1}


class Raises(Steps):
    def on_bar(self, bar):
        raise KeyError("ema_50")


@pytest.mark.parametrize(
    "cls, message",
    [
        (Tuple, "state of AAPL changes in a JSON round trip"),
        (Huge, "state of AAPL is 70024 bytes of JSON, over 65536: keep bounded windows"),
        (Broken, "at ts \\d+: returned {'target': 1}; expected Target, Order or None"),
        (Raises, "on AAPL at ts \\d+: KeyError: 'ema_50'"),
    ],
)
def test_a_strategy_that_breaks_the_contract_stops_with_one_line(cls, message):
    desk = desks.StrategyDesk(StrategyConfig(), spec(cls))
    with pytest.raises(StrategyError, match=f"^strategy test_strategy_api:{cls.__name__}[: ].*{message}"):
        feed(desk, [indicator_set("AAPL", T0 + i * MIN, 100.0) for i in range(3)])


def test_bad_decisions_are_refused():
    for decision, message in (
        (Target(float("nan")), "Target position nan is not a finite number"),
        (Order("HOLD", 1), "Order\\('HOLD', 1\\): side must be BUY or SELL"),
        (Order("BUY", 0), "Order\\('BUY', 0\\)"),
        (Target(1, 5), "reason 5 is not a string"),
    ):
        Steps.script = [decision]
        with pytest.raises(StrategyError, match=message):
            feed(desks.StrategyDesk(StrategyConfig(), spec(Steps)), [indicator_set("AAPL", T0, 100.0)])


class Both(Steps):
    def on_prediction(self, p):
        return None


class Neither(Strategy):
    pass


NotAStrategy = dict


@pytest.mark.parametrize(
    "path, params, message",
    [
        ("examples.ema_cross", "{}", "STRATEGY='examples.ema_cross': expected package.module:Class"),
        ("no_such_pkg.mod:X", "{}", "STRATEGY=no_such_pkg.mod:X: no module no_such_pkg.mod (run from the directory"),
        ("examples.ema_cross:Nope", "{}", "STRATEGY=examples.ema_cross:Nope: module examples.ema_cross has no Nope"),
        ("test_strategy_api:NotAStrategy", "{}", "NotAStrategy is not a subclass of ticktape.api.Strategy"),
        (
            "test_strategy_api:Both",
            "{}",
            "Both must define exactly one of on_prediction, on_bar (it defines on_prediction, on_bar)",
        ),
        ("test_strategy_api:Neither", "{}", "(it defines neither)"),
        ("examples.ema_cross:EmaCross", "{fast: 5}", "STRATEGY_PARAMS='{fast: 5}' is not JSON"),
        ("examples.ema_cross:EmaCross", "[5, 20]", "STRATEGY_PARAMS='[5, 20]': expected a JSON object"),
        (
            "examples.ema_cross:EmaCross",
            '{"fsat": 5}',
            "EmaCross refuses them: EmaCross.__init__() got an unexpected keyword argument 'fsat'",
        ),
        (
            "examples.ema_cross:EmaCross",
            '{"fast": 30}',
            "fast and slow must be whole numbers with 1 <= fast < slow, got 30 and 20",
        ),
        (
            "ticktape.api:PUpHysteresis",
            '{"enter_p": 0.7}',
            "the built-in ticktape.api:PUpHysteresis takes its parameters from STRATEGY_ENTER_P",
        ),
    ],
)
def test_bad_strategy_or_params_is_one_config_error(path, params, message):
    with pytest.raises(ConfigError) as e:
        load_strategy(make_settings(strategy=path, strategy_params=params))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_example_loads_with_its_source_hash():
    import hashlib

    loaded = load_strategy(make_settings(strategy="examples.ema_cross:EmaCross", strategy_params='{"fast": 3}'))
    assert loaded.record() == {
        "class": "examples.ema_cross:EmaCross",
        "params": {"fast": 3},
        "source_sha256": hashlib.sha256((REPO_ROOT / "examples" / "ema_cross.py").read_bytes()).hexdigest(),
    }


@pytest.mark.parametrize("argv", [["run", "--duration", "1"], ["backtest", "--source", "csv", "--input", "x.csv"]])
def test_the_commands_refuse_a_bad_strategy_before_starting_anything(argv, tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "TICKTAPE_HOME": str(tmp_path),
        "STRATEGY": "examples.ema_cross:EmaCross",
        "STRATEGY_PARAMS": '{"slow": 0}',
        "DATABASE_URL": "postgresql://127.0.0.1:1/none",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ticktape.cli", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == (
        'ticktape: error: STRATEGY_PARAMS={"slow": 0}: EmaCross refuses them: fast and slow '
        "must be whole numbers with 1 <= fast < slow, got 5 and 0\n"
    )
    assert not (tmp_path / "stack").exists() and done.stdout == ""


def test_a_custom_strategy_s_signals_pass_the_risk_engine_with_its_reason_codes():
    Steps.script = [Target(2000, "too big"), Target(50, "fits"), None]
    chain = desks.TradingChain(**chain_args("bars") | {"strategy": spec(Steps)})
    for i in range(3):
        for sym in ("AAPL", "KO", "MSFT"):
            chain.feed("indicator_set", indicator_set(sym, T0 + i * MIN, 100.0))
    out = chain.outputs
    assert [(r["symbol"], r["reason_code"]) for r in out["rejection"]] == [
        ("AAPL", "MAX_ORDER_NOTIONAL"),
        ("KO", "MAX_ORDER_NOTIONAL"),
        ("MSFT", "MAX_ORDER_NOTIONAL"),
    ]
    assert [(o["symbol"], o["side"], o["quantity"]) for o in out["order"]] == [
        ("AAPL", "BUY", 50.0),
        ("KO", "BUY", 50.0),
        ("MSFT", "BUY", 50.0),
    ]

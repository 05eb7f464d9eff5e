"""The strategy API (public as ``ticktape.api``): a strategy is a class with one hook for
the events it trades on, one instance per symbol, and a state that is a JSON dict.

* ``on_prediction(p: Prediction)`` — the model's prediction of a closed bar (Prediction
  v2: ``p_up``, the bar's ``close`` and ``volatility_20``), from ``ml.predictions``;
* ``on_bar(bar: Bar)`` — a closed bar with its indicator set, from
  ``analytics.indicators`` (no model needed).

A class defines exactly one of them: the strategy stage then reads that one topic.  Two
topics would interleave differently from run to run, and a decision must depend on the
symbol's own events alone (that is what makes the live stage, the in-process backtest
and the kafka-mode backtest give the same Signals).  Only events of
``STRATEGY_INTERVAL`` reach the hook, each symbol's in ``ts`` order, each once
(redeliveries are dropped before the hook).

A hook returns ``None`` (no change), ``Target(position)`` (the symbol's target position,
in units; negative = short) or ``Order(side, quantity)`` (an order intent: the target
moves by ``quantity``).  A changed target becomes a Signal, which the risk engine turns
into an order of ``target - committed position`` or a rejection with its reason code,
exactly as for the built-in strategy.  ``self.target`` is the symbol's current target.

State: ``to_dict()`` / ``from_dict(d)``; by default the attributes named in
``state_fields``.  The framework saves it with the stage's state (the ``strategy``
table's changelog) and restores it after a restart or a rebalance, so it must survive a
JSON round trip unchanged, and it is bounded: over ``STATE_MAX_BYTES`` of JSON is a
:class:`StrategyError` (keep windows in fixed-size structures).  A hook must be a pure
function of the events and the state: no clock, no unseeded randomness, no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .strategy import STRATEGY_NAME, StrategyConfig, SymbolState, check_prediction, decide, signal_event
from .trading import BUY, SELL

STATE_MAX_BYTES = 65_536  # JSON of one symbol's strategy state
INPUTS = {"on_prediction": "prediction", "on_bar": "indicator_set"}


class StrategyError(RuntimeError):
    """A strategy broke the API's contract (a bad decision, a state too large or not JSON):
    a defect of the strategy, not of its input, so the stage stops with this one line."""


@dataclass(slots=True)  # not frozen: one per event, and a frozen one costs several µs to build
class Prediction:
    event_id: str
    symbol: str
    interval: str
    ts: int  # the scored bar's window end, microseconds since the epoch
    p_up: float
    close: float
    volatility_20: float | None
    model_version: str


@dataclass(slots=True)
class Bar:
    """A closed bar as the indicator stage publishes it: close, volume and the indicator
    set (``indicators["ema_12"]`` ..., the user indicators' outputs by name too; None
    until an indicator's lookback is filled)."""

    event_id: str
    symbol: str
    interval: str
    ts: int  # window end, microseconds since the epoch
    close: float
    volume: float
    indicators: Mapping[str, float | None]


@dataclass(frozen=True, slots=True)
class Target:
    position: float  # units of the symbol; negative = short, 0 = flat
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Order:
    side: str  # "BUY" or "SELL"
    quantity: float  # > 0: the target moves by this much
    reason: str = ""


Decision = Target | Order | None


class Strategy:
    """Base of every strategy; subclass it and define ``on_prediction`` or ``on_bar``.

    ``__init__(self, symbol, **params)``: ``params`` are ``STRATEGY_PARAMS`` (a JSON
    object); a parameter the class does not take is refused before anything runs."""

    name: ClassVar[str | None] = None  # the Signals' ``strategy`` (default: the class name)
    _fixed_state: ClassVar[bool] = False  # the framework checks the state after every event
    state_fields: ClassVar[tuple[str, ...]] = ()  # attributes the default to_dict/from_dict keep

    def __init__(self, symbol: str):
        self.symbol = symbol
        self.target = 0.0  # kept by the framework: the last target this strategy set

    def on_prediction(self, p: Prediction) -> Decision:
        raise NotImplementedError

    def on_bar(self, bar: Bar) -> Decision:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.state_fields}

    def from_dict(self, d: dict[str, Any]) -> None:
        for k in self.state_fields:
            setattr(self, k, d[k])

    @classmethod
    def input_kind(cls) -> str:
        """The event type the class trades on; StrategyError unless it defines exactly one hook."""
        defined = [hook for hook in INPUTS if getattr(cls, hook) is not getattr(Strategy, hook)]
        if len(defined) != 1:
            raise StrategyError(
                f"{cls.__qualname__} must define exactly one of on_prediction, on_bar "
                f"(it defines {', '.join(defined) or 'neither'})"
            )
        return INPUTS[defined[0]]

    @classmethod
    def display_name(cls) -> str:
        return cls.name or cls.__name__


class PUpHysteresis(Strategy):
    """The built-in strategy: p_up thresholds with hysteresis (``ticktape.core.strategy``);
    its parameters are the STRATEGY_* settings (``StrategyConfig`` without account and
    interval)."""

    name = STRATEGY_NAME
    _fixed_state = True  # five numbers: the per-event state check (a third of its time) is skipped

    def __init__(self, symbol: str, **params):
        super().__init__(symbol)
        self.cfg = StrategyConfig(**params)
        self.s = SymbolState()

    def on_prediction(self, p: Prediction) -> Decision:
        self.s.last_pred_ts = p.ts
        decided = decide(self.cfg, self.s, p.p_up, p.close, p.volatility_20)
        return None if decided is None else Target(*decided)

    def to_dict(self) -> dict[str, Any]:
        return self.s.to_dict()

    def from_dict(self, d: dict[str, Any]) -> None:
        self.s = SymbolState.from_dict(d)


def builtin_params(cfg: StrategyConfig) -> dict[str, Any]:
    """The built-in strategy's parameters from a StrategyConfig."""
    return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in ("account", "interval")}


@dataclass(frozen=True)
class StrategySpec:
    """What runs: the class, its parameters, where it was imported from (``STRATEGY``) and
    the sha256 of its module's source (recorded with a run)."""

    cls: type[Strategy]
    params: Mapping[str, Any]
    path: str
    source_sha256: str

    def record(self) -> dict[str, Any]:
        return {"class": self.path, "params": dict(self.params), "source_sha256": self.source_sha256}


class SymbolRun:
    """One symbol's strategy instance and what the framework keeps beside it."""

    __slots__ = ("inst", "last_ts", "target")

    def __init__(self, inst: Strategy):
        self.inst, self.last_ts, self.target = inst, None, 0.0


def check_state(spec: StrategySpec, inst: Strategy) -> dict:
    """The instance's state, refused (StrategyError) when not a bounded JSON round trip."""
    state = inst.to_dict()
    try:
        text = json.dumps(state, allow_nan=True)
        same = json.loads(text) == state
    except (TypeError, ValueError) as e:
        raise StrategyError(
            f"strategy {spec.path}: state of {inst.symbol} is not JSON ({e}); "
            "keep numbers, strings, lists and dicts in to_dict"
        ) from None
    if not same:
        raise StrategyError(
            f"strategy {spec.path}: state of {inst.symbol} changes in a JSON round trip "
            "(tuples, non-string keys?): to_dict must give what from_dict restores"
        )
    if len(text) > STATE_MAX_BYTES:
        raise StrategyError(
            f"strategy {spec.path}: state of {inst.symbol} is {len(text)} bytes of JSON, over "
            f"{STATE_MAX_BYTES}: keep bounded windows (e.g. collections.deque(maxlen=N) as a list)"
        )
    return state


def new_target(spec: StrategySpec, run: SymbolRun, decision: Decision, ts: int) -> tuple[float, str] | None:
    """(target, reason) of a hook's decision; None for no decision."""
    if decision is None:
        return None
    where = f"strategy {spec.path} on {run.inst.symbol} at ts {ts}"
    if isinstance(decision, Target):
        target = decision.position
        if not (isinstance(target, (int, float)) and math.isfinite(target)):
            raise StrategyError(f"{where}: Target position {target!r} is not a finite number")
        target = float(target)
    elif isinstance(decision, Order):
        q = decision.quantity
        if decision.side not in (BUY, SELL) or not (isinstance(q, (int, float)) and 0 < q < math.inf):
            raise StrategyError(
                f"{where}: Order({decision.side!r}, {q!r}): side must be BUY or SELL and quantity a positive number"
            )
        target = run.target + q if decision.side == BUY else run.target - q
    else:
        raise StrategyError(f"{where}: returned {decision!r}; expected Target, Order or None")
    if not isinstance(decision.reason, str):
        raise StrategyError(f"{where}: reason {decision.reason!r} is not a string")
    return target, decision.reason or f"target {target:g}"


def view(kind: str, ev: dict) -> Prediction | Bar:
    """The hook's argument for an input event (validated: ValueError when untradeable)."""
    if kind == "prediction":
        check_prediction(ev)
        return Prediction(
            ev["event_id"],
            ev["symbol"],
            ev["interval"],
            ev["ts"],
            ev["p_up"],
            ev["close"],
            ev.get("volatility_20"),
            ev["model_version"],
        )
    close = ev["close"]
    if close is None or not 0.0 < close < math.inf:
        raise ValueError(f"indicator set {ev['event_id']}: close={close!r} is not a price")
    return Bar(
        ev["event_id"],
        ev["symbol"],
        ev["interval"],
        ev["ts"],
        close,
        ev["volume"],
        {k: v for k, v in ev.items() if k not in _BAR_KEYS} | ev.get("extra", {}),  # user indicators by name
    )


_BAR_KEYS = frozenset(("event_id", "symbol", "interval", "ts", "close", "volume", "extra"))


def signal_for(spec: StrategySpec, account: str, run: SymbolRun, ev: dict, decided: tuple[float, str]) -> dict:
    target, reason = decided
    return signal_event(
        account,
        run.inst.symbol,
        ev["ts"],
        ev["event_id"],
        run.target,
        target,
        ev["close"],
        spec.cls.display_name(),
        reason,
        ev.get("model_version"),
    )

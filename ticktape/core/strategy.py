"""Strategy: predictions -> target position per symbol -> order intents (Signal events).

Rule (per symbol, one decision per prediction of ``cfg.interval``):

* flat  -> long  when ``p_up >= enter_p``; flat -> short when ``p_down >= enter_p``
  (``p_down = 1 - p_up``; shorts only with ``sides = long_short``);
* long  -> flat  when ``p_up < exit_p`` (straight to short if also ``p_down >= enter_p``);
* short -> flat  when ``p_down < exit_p`` (straight to long if also ``p_up >= enter_p``).

``enter_p - exit_p`` is the hysteresis band.  A target, once changed, stands for at
least ``min_hold_bars`` decisions.  The size is fixed when a position is entered (no
rebalancing while the direction holds): ``notional / close`` (fixed_notional) or
``notional * min(vol_target / volatility_20, max_vol_scale) / close`` (vol_target),
rounded down to whole lots; an entry that sizes to 0 lots is not taken.

The Signal carries the new ``target_position``; ``side``/``quantity`` are the change
from the previous target.  The risk engine orders ``target - committed position``, so
a rejected intent never leaves the account off target by more than the last change.

Price and volatility are those of the scored bar, which the Prediction carries (v2):
a decision needs its prediction alone, so there is no join whose buffers could
overflow or whose result could depend on how two topics interleave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError
from .trading import side_of

STRATEGY_NAME = "p_up_hysteresis"
_DIRECTION = {1: "long", 0: "flat", -1: "short"}


@dataclass(frozen=True, slots=True)
class StrategyConfig:
    account: str = "paper"
    interval: str = "1m"
    enter_p: float = 0.60
    exit_p: float = 0.55
    sides: str = "long_short"
    min_hold_bars: int = 5
    sizing: str = "fixed_notional"
    notional: float = 10_000.0
    vol_target: float = 0.20
    max_vol_scale: float = 3.0
    lot_size: float = 1.0

    def __post_init__(self):
        # the settings check STRATEGY_* by their names first (ticktape.config); these are
        # the rule's own invariants, for a config built in code
        if not 0.5 < self.enter_p < 1.0:
            raise ConfigError(f"enter_p must be in (0.5, 1), got {self.enter_p!r}")
        if not 0.0 < self.exit_p <= self.enter_p:
            raise ConfigError(f"exit_p must be in (0, enter_p={self.enter_p}], got {self.exit_p!r}")
        if self.sides not in ("long_short", "long_only"):
            raise ConfigError(f"sides must be long_short or long_only, got {self.sides!r}")
        if self.sizing not in ("fixed_notional", "vol_target"):
            raise ConfigError(f"sizing must be fixed_notional or vol_target, got {self.sizing!r}")
        if not (isinstance(self.min_hold_bars, int) and self.min_hold_bars >= 0):
            raise ConfigError(f"min_hold_bars must be an integer >= 0, got {self.min_hold_bars!r}")
        for name, value in (
            ("notional", self.notional),
            ("vol_target", self.vol_target),
            ("max_vol_scale", self.max_vol_scale),
            ("lot_size", self.lot_size),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not self.account:
            raise ConfigError("account must not be empty")


class SymbolState:
    __slots__ = ("direction", "target", "decisions", "changed_at", "last_pred_ts")

    def __init__(self):
        self.direction = 0  # -1 short, 0 flat, 1 long
        self.target = 0.0
        self.decisions = 0
        self.changed_at: int | None = None  # decision number of the last target change
        self.last_pred_ts: int | None = None

    def to_dict(self) -> dict:
        return {
            "direction": self.direction,
            "target": self.target,
            "decisions": self.decisions,
            "changed_at": self.changed_at,
            "last_pred_ts": self.last_pred_ts,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SymbolState":
        s = cls()  # a state saved with join buffers (before Prediction v2) loads without them
        s.direction, s.target, s.decisions = d["direction"], d["target"], d["decisions"]
        s.changed_at, s.last_pred_ts = d["changed_at"], d["last_pred_ts"]
        return s


class Strategy:
    __slots__ = ("cfg", "symbols")

    def __init__(self, cfg: StrategyConfig):
        self.cfg = cfg
        self.symbols: dict[str, SymbolState] = {}

    def to_dict(self) -> dict:
        return {"symbols": {sym: s.to_dict() for sym, s in self.symbols.items()}}

    @classmethod
    def from_dict(cls, d: dict, cfg: StrategyConfig) -> "Strategy":
        st = cls(cfg)
        st.symbols = {sym: SymbolState.from_dict(s) for sym, s in d["symbols"].items()}
        return st


def check_prediction(pred: dict) -> None:
    """ValueError when a prediction cannot be traded: p_up not a probability, no price."""
    p_up, close = pred["p_up"], pred.get("close")
    if not 0.0 <= p_up <= 1.0:
        raise ValueError(f"prediction {pred['event_id']}: p_up={p_up!r} is not a probability")
    if close is None or not 0.0 < close < math.inf:
        raise ValueError(
            f"prediction {pred['event_id']}: close={close!r} is not a price "
            "(Prediction v1 carries none: re-run the predict stage)"
        )


def on_prediction(st: Strategy, pred: dict) -> list[dict]:
    """The Signal (if the target changes) for one prediction, in ts order per symbol."""
    if pred["interval"] != st.cfg.interval:
        return []
    check_prediction(pred)
    symbol = pred["symbol"]
    s = st.symbols.get(symbol) or st.symbols.setdefault(symbol, SymbolState())
    ts = pred["ts"]
    if s.last_pred_ts is not None and ts <= s.last_pred_ts:
        return []  # redelivered
    s.last_pred_ts = ts
    before = s.target
    decided = decide(st.cfg, s, pred["p_up"], pred["close"], pred.get("volatility_20"))
    if decided is None:
        return []
    return [
        signal_event(
            st.cfg.account,
            symbol,
            ts,
            pred["event_id"],
            before,
            decided[0],
            pred["close"],
            STRATEGY_NAME,
            decided[1],
            pred["model_version"],
        )
    ]


def signal_event(
    account: str,
    symbol: str,
    ts: int,
    source_id: str,
    before: float,
    target: float,
    price: float,
    strategy: str,
    reason: str,
    model_version: str | None,
) -> dict:
    """The Signal moving ``symbol`` from target ``before`` to ``target``, decided on the
    event ``source_id`` (its id makes the Signal's: one decision per input event)."""
    delta = target - before
    return {
        "event_id": f"sig:{account}:{source_id}",
        "account": account,
        "symbol": symbol,
        "ts": ts,
        "side": side_of(delta),
        "quantity": abs(delta),
        "target_position": target,
        "reference_price": price,
        "strategy": strategy,
        "reason": reason,
        "model_version": model_version,
    }


def decide(
    cfg: StrategyConfig, s: SymbolState, p_up: float, close: float, vol: float | None
) -> tuple[float, str] | None:
    """(new target, reason) when the rule changes the target (``s`` advances), else None."""
    s.decisions += 1
    d = s.direction
    shorts = cfg.sides == "long_short"
    p_down = 1.0 - p_up  # shorts compare p_down with the thresholds: exact mirror, no 1 - 0.55 rounding
    enter_long, enter_short = p_up >= cfg.enter_p, shorts and p_down >= cfg.enter_p
    if d == 1:
        want = 1 if p_up >= cfg.exit_p else (-1 if enter_short else 0)
    elif d == -1:
        want = -1 if p_down >= cfg.exit_p else (1 if enter_long else 0)
    else:
        want = 1 if enter_long else (-1 if enter_short else 0)
    if want == d or (s.changed_at is not None and s.decisions - s.changed_at < cfg.min_hold_bars):
        return None
    size, sizing = _size(cfg, close, vol) if want else (0.0, "")
    if want and size == 0.0:
        if d == 0:
            return None  # cannot size an entry: stay flat
        want, sizing = 0, f"exit only: {sizing}"
    if want == 1:
        rule = f"p_up {p_up:.4f} >= {cfg.enter_p:g}"
    elif want == -1:
        rule = f"p_up {p_up:.4f} <= {1.0 - cfg.enter_p:g}"
    elif d == 1:
        rule = f"p_up {p_up:.4f} < {cfg.exit_p:g}"
    else:
        rule = f"p_up {p_up:.4f} > {1.0 - cfg.exit_p:g}"
    target = want * size
    s.direction, s.target, s.changed_at = want, target, s.decisions
    reason = f"{rule}: {_DIRECTION[d]} -> {_DIRECTION[want]}"
    if sizing:
        reason += f" ({sizing})"
    return target, reason


def _size(cfg: StrategyConfig, close: float, vol: float | None) -> tuple[float, str]:
    """(quantity in whole lots, how it was sized) for a new position at ``close``."""
    if cfg.sizing == "vol_target":
        if vol is None:
            return 0.0, "vol_target: volatility_20 not available yet"
        scale = cfg.max_vol_scale if vol <= 0 else min(cfg.vol_target / vol, cfg.max_vol_scale)
        notional = cfg.notional * scale
        how = f"vol_target {cfg.vol_target:g} / volatility {vol:.4f}: notional {notional:.2f} @ {close:g}"
    else:
        notional = cfg.notional
        how = f"fixed_notional {notional:.2f} @ {close:g}"
    if not close > 0:
        return 0.0, f"no positive price ({close!r})"
    return math.floor(notional / close / cfg.lot_size) * cfg.lot_size, how

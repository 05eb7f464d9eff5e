"""ticktape's public Python API: your own strategy and indicators, the same live and in backtests.

    from ticktape.api import Bar, Strategy, Target

    class EmaCross(Strategy):
        state_fields = ("fast", "slow")
        ...
        def on_bar(self, bar: Bar) -> Target | None: ...

    STRATEGY=examples.ema_cross:EmaCross STRATEGY_PARAMS='{"fast_bars": 5}' ticktape backtest ...

The hooks, decisions and state rules are in ``ticktape.core.strategies`` (re-exported
here); the README's "Write your own strategy" walks through ``examples/ema_cross.py``.
``load_strategy`` is how the worker, both backtest modes and ``ticktape run`` load
``STRATEGY`` and ``STRATEGY_PARAMS``: the module is imported from ``PYTHONPATH`` or the
current directory.

    from ticktape.api import Indicator

    class Range(Indicator):        # INDICATORS=mypkg.indicators:Range
        name = "range_5"           # IndicatorSet extra["range_5"], feature "range_5"
        ...

``Indicator`` (``ticktape.core.indicators``): one class per indicator, fed each symbol's
bars; ``load_indicators`` loads ``INDICATORS`` the same way for the indicators stage,
``ticktape train``, the predict stage and both backtest modes.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import sys
from typing import TypeVar

from .config import ConfigError, Settings
from .core.features import FEATURE_NAMES
from .core.indicators import STATE_MAX_BYTES as INDICATOR_STATE_MAX_BYTES
from .core.indicators import Indicator, IndicatorError, IndicatorSpec, check_indicator_class
from .core.strategies import (
    STATE_MAX_BYTES,
    Bar,
    Decision,
    Order,
    Prediction,
    PUpHysteresis,
    Strategy,
    StrategyError,
    StrategySpec,
    Target,
    builtin_params,
    check_state,
)
from .core.strategy import StrategyConfig

_T = TypeVar("_T")

__all__ = [
    "INDICATOR_STATE_MAX_BYTES",
    "STATE_MAX_BYTES",
    "Bar",
    "Decision",
    "Indicator",
    "IndicatorError",
    "IndicatorSpec",
    "Order",
    "Prediction",
    "PUpHysteresis",
    "Strategy",
    "StrategyError",
    "StrategySpec",
    "Target",
    "load_indicators",
    "load_strategy",
    "strategy_config",
]


def strategy_config(s: Settings) -> StrategyConfig:
    """The strategy stage's configuration: TRADING_ACCOUNT, STRATEGY_INTERVAL and the
    built-in strategy's STRATEGY_* (checked by the settings)."""
    return StrategyConfig(
        s.trading_account,
        s.strategy_interval,
        s.strategy_enter_p,
        s.strategy_exit_p,
        s.strategy_sides.lower(),
        s.strategy_min_hold_bars,
        s.strategy_sizing.lower(),
        s.strategy_notional,
        s.strategy_vol_target,
        s.strategy_max_vol_scale,
        s.strategy_lot_size,
    )


def load_strategy(s: Settings) -> StrategySpec:
    """The class ``STRATEGY`` names with ``STRATEGY_PARAMS``, checked by building one
    instance; ConfigError (one line, naming the value) when either cannot be used."""
    path = s.strategy.strip()
    cls = _import("STRATEGY", path, Strategy)
    class_name = path.partition(":")[2]
    try:
        cls.input_kind()
    except StrategyError as e:
        raise ConfigError(f"STRATEGY={path}: {e}") from None
    try:
        params = json.loads(s.strategy_params)
    except ValueError as e:
        raise ConfigError(f"STRATEGY_PARAMS={s.strategy_params!r} is not JSON ({e})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"STRATEGY_PARAMS={s.strategy_params!r}: expected a JSON object of parameters")
    if cls is PUpHysteresis:
        if params:
            raise ConfigError(
                f"STRATEGY_PARAMS={s.strategy_params!r}: the built-in {path} takes its "
                "parameters from STRATEGY_ENTER_P, STRATEGY_EXIT_P, ... (leave STRATEGY_PARAMS empty)"
            )
        params = builtin_params(strategy_config(s))
    spec = StrategySpec(cls, params, path, _source_sha256(cls))
    try:
        probe = cls("_probe", **params)
    except (TypeError, ValueError) as e:  # an unknown or bad parameter (ConfigError is a ValueError)
        raise ConfigError(f"STRATEGY_PARAMS={json.dumps(params)}: {class_name} refuses them: {e}") from None
    try:
        check_state(spec, probe)
    except StrategyError as e:
        raise ConfigError(str(e)) from None
    return spec


def _import(setting: str, path: str, base: type[_T]) -> type[_T]:
    """The class ``path`` (package.module:Class) names, a subclass of ``base``; ConfigError
    naming ``setting`` otherwise."""
    module_name, sep, class_name = path.partition(":")
    if not sep or not all(part.isidentifier() for part in module_name.split(".")) or not class_name.isidentifier():
        raise ConfigError(f"{setting}={path!r}: expected package.module:Class (e.g. {_EXAMPLES[setting]})")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)  # after everything installed: a local file shadows nothing
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(
                f"{setting}={path}: no module {module_name} (run from the directory that holds it, "
                "or add that directory to PYTHONPATH)"
            ) from None
        raise ConfigError(f"{setting}={path}: importing {module_name} failed: {e}") from None
    except Exception as e:  # a syntax error or a failing top level in the user's module
        raise ConfigError(f"{setting}={path}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"{setting}={path}: module {module_name} has no {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{setting}={path}: {class_name} is not a subclass of ticktape.api.{base.__name__}")
    return cls


_EXAMPLES = {"STRATEGY": "examples.ema_cross:EmaCross", "INDICATORS": "mypkg.indicators:Range"}


def load_indicators(s: Settings) -> tuple[IndicatorSpec, ...]:
    """The user indicators ``INDICATORS`` names, in its order, each checked (outputs that
    clash with no built-in indicator or feature nor each other, an instance and its state);
    ConfigError (one line, naming the value) otherwise."""
    specs: list[IndicatorSpec] = []
    taken: list[str] = list(FEATURE_NAMES)
    for path in (p.strip() for p in s.indicators.split(",")):
        if not path:
            continue
        cls = _import("INDICATORS", path, Indicator)
        try:
            check_indicator_class(cls, taken)
        except IndicatorError as e:
            raise ConfigError(f"INDICATORS={path}: {e}") from None
        if any(spec.cls.name == cls.name for spec in specs):  # its state is saved under its name
            raise ConfigError(f"INDICATORS={path}: another indicator is named {cls.name!r} too")
        taken.extend(cls.output_names())
        specs.append(IndicatorSpec(cls, path, _source_sha256(cls)))
    return tuple(specs)


def _source_sha256(cls: type) -> str:
    """sha256 of the source file that defines ``cls`` ("" when it has none, e.g. a REPL)."""
    try:
        with open(inspect.getfile(cls), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (OSError, TypeError):
        return ""

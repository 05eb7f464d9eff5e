"""Backtests from Python: ``run(df)`` takes a pandas DataFrame of bars or ticks and gives
the figures, the equity curve and the trades as DataFrames.

    import pandas, ticktape.backtest
    df = pandas.read_csv("tests/data/GOOG_daily.csv", index_col=0)   # Yahoo daily bars
    r = ticktape.backtest.run(df, symbols="GOOG", model="3f2a…", STRATEGY_ENTER_P=0.55)
    r.figures["sharpe"], r.equity.equity.plot(), r.trades

It is `ticktape backtest --source csv` on the same rows: the DataFrame's columns are read
as a CSV header (``producers.replay.read_table``: the same column rules, any case) and its
cells as the text ``to_csv`` would write, then the command's own ``prepare`` /
``simulate`` / ``finish`` run, so a file and ``pandas.read_csv`` of it give the same
figures, equity and trades.  The time may be the index (``index_col=0``, yfinance's
``history()``).  Errors are ``ticktape.cli.UsageError`` with the command's message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, cast

from .cli import UsageError
from .commands import backtest as command
from .config import ConfigError, _convert, settings as env_settings
from .core.backtest import TRADE_FIELDS, Events

if TYPE_CHECKING:
    import pandas

    from .api import Strategy
    from .core.backtest import Result as RunResult

_TIME_NAMES = ("time", "date", "datetime", "ts")  # a column that holds the time: the index does not


@dataclass
class Result:
    """One run: its figures (``backtest_runs.metrics``), counts, equity curve and trades
    (the ``backtest_equity`` / ``backtest_trades`` rows, times as UTC Timestamps), every
    event, the sha256 of curve and trades (``results_sha256``), and the run id (stored
    only with ``store=True``)."""

    run_id: str
    figures: dict
    counts: dict
    equity: pandas.DataFrame
    trades: pandas.DataFrame
    events: Events
    parameters: dict
    sha256: str
    stored: bool


def run(
    df: pandas.DataFrame,
    *,
    model: str | None = None,
    symbols: str | list[str] | None = None,
    interval: str | None = None,
    config: str | None = None,
    store: bool = False,
    strategy: str | type[Strategy] | None = None,
    strategy_params: dict | str | None = None,
    **settings: Any,
) -> Result:
    """Backtest the bars or ticks of ``df``.

    ``model``: a registry version (or unique prefix) or a model directory; None: the active
    one when there is a database.  ``symbols``: the universe and a filter (default: the
    rows' symbols; a frame without a symbol column needs exactly one).  ``interval``: the
    bars' length (default: their shortest time step).  ``config``: the risk file.
    ``store``: also write the run to ``backtest_runs`` & co.  ``strategy``: STRATEGY, as
    ``package.module:Class`` or the class itself (at the top level of its module, a
    notebook's included); ``strategy_params``: STRATEGY_PARAMS, as JSON or a dict.
    ``settings``: settings by env name or field name (``STRATEGY_ENTER_P=0.55`` or
    ``strategy_enter_p=0.55``)."""
    import pandas as pd
    from producers.replay import read_table

    if strategy is not None:
        settings["STRATEGY"] = strategy if isinstance(strategy, str) else f"{strategy.__module__}:{strategy.__name__}"
    if strategy_params is not None:
        settings["STRATEGY_PARAMS"] = (
            strategy_params if isinstance(strategy_params, str) else json.dumps(strategy_params)
        )

    try:
        s = env_settings(**_overrides(settings))
    except ConfigError as e:  # a value out of its bounds: the command's one-line message
        raise UsageError(str(e)) from None
    if interval is not None:
        command.check_interval(interval, "interval")
    # the command's --symbols rule: comma/space separated
    wanted = (
        None if symbols is None else command._symbols(symbols if isinstance(symbols, str) else " ".join(symbols), s)
    )
    if store and not s.database_url:
        raise UsageError("no database to store the run: set DATABASE_URL or run `ticktape stack up`")
    header, rows = _table(df)
    kind, parsed = read_table("DataFrame", header, rows, interval, wanted[0] if wanted and len(wanted) == 1 else None)
    if kind == "tick" and interval is not None:
        raise UsageError("DataFrame holds ticks: drop interval")
    market = command.table_market("DataFrame", kind, parsed, None, None, set(wanted) if wanted else None)
    plan = command.prepare(s, market, wanted or market.symbols, model, config, None, None)
    setup = plan.setups[0]
    events = command.simulate(plan, setup)
    # finish returns core.backtest.summarize's Result (typed object there)
    row, result = cast("tuple[dict, RunResult]", command.finish(plan, setup, events, command.new_run_id(), save=store))
    equity = pd.DataFrame(result.equity)
    trades = pd.DataFrame(result.trades, columns=list(TRADE_FIELDS))
    for frame in (equity, trades):
        frame["ts"] = pd.to_datetime(frame["ts"], unit="us", utc=True)
    return Result(
        row["run_id"], result.metrics, result.counts, equity, trades, events, row["parameters"], result.sha256, store
    )


def _overrides(given: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings as Settings fields, each converted and checked as its env var would be."""
    out = {}
    for name, value in given.items():
        f = command.setting_field(name)
        if f is None:
            raise UsageError(f"{name} is not a setting (see `ticktape config --table`)")
        try:
            out[f.name] = _convert(str(value), f.type, f.metadata["env"])
        except ConfigError as e:
            raise UsageError(str(e)) from None
    return out


def _table(df: pandas.DataFrame) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The frame as a CSV reader sees its ``to_csv``: header, then (line, cells as text);
    the index is the first column when no column holds the time."""
    import pandas as pd

    names = [str(c) for c in df.columns]
    columns = [df[c].tolist() for c in df.columns]
    if not any(n.strip().lower() in _TIME_NAMES for n in names) and not isinstance(df.index, pd.RangeIndex):
        names.insert(0, str(df.index.name or ""))
        columns.insert(0, df.index.tolist())
    rows = [(line, [_cell(v) for v in cells]) for line, cells in enumerate(zip(*columns), start=2)]
    return names, rows


def _cell(v) -> str:
    """A cell as text: timestamps in ISO-8601, numbers exactly (repr), missing as empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    return str(v)

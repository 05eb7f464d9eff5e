"""Performance figures of a backtest from its equity curve and trades (pure, no I/O).

Definitions (documented in ``ticktape backtest --help`` too):

* the equity curve is sampled once per period (``resample_last``: the last equity
  value in each period of ``period_us``, e.g. the strategy's bar interval) and starts
  with the starting cash; returns are simple period returns ``e[i] / e[i-1] - 1``;
* ``total_return`` = last / first - 1;
* ``cagr`` = (last / first) ** (1 / years) - 1 with years = elapsed event time over a
  365-day year (the project's 24/7 annualization, ``core.intervals``); None for a
  curve spanning no time, or too short for its growth to annualize to a float;
* ``sharpe`` = mean(r) / std(r, ddof=1) * sqrt(periods per year), risk-free rate 0;
* ``sortino`` = mean(r) / sqrt(mean(min(r, 0)²)) * sqrt(periods per year) (downside
  deviation over all periods, target 0);
  both None with fewer than two returns or a zero denominator;
* ``max_drawdown`` = max over t of 1 - e[t] / max(e[..t]) (a fraction, >= 0);
* ``win_rate`` = winning / closing trades, where a closing trade is a fill that reduces
  a position and it wins when its gross realized PnL (commission excluded) is > 0;
  None without closing trades;
* ``turnover`` = traded notional (sum of |quantity| * price over fills) / mean equity;
* ``span_us`` = the curve's elapsed event time.

Annualized figures (``cagr``, ``sharpe``, ``sortino``) are not meaningful on a short run
(a 92-second run would annualize to CAGR -100 % or a Sharpe of -2040): on a curve
spanning less than ``MIN_ANNUALIZED_DAYS`` they are None, which the command and the
report show as "n/a" with the reason (``annualized_note``).  Both show the figures with
``display``: the same units everywhere (percent for returns, drawdown and win rate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

from .intervals import SECONDS_PER_YEAR
from .trading import side_sign

US_PER_YEAR = SECONDS_PER_YEAR * 1_000_000
US_PER_DAY = 86_400 * 1_000_000
MIN_ANNUALIZED_DAYS = 30  # below this span CAGR, Sharpe and Sortino are not meaningful
ANNUALIZED = ("cagr", "sharpe", "sortino")
PERCENT = ("total_return", "cagr", "max_drawdown", "win_rate")  # fractions shown as percent

_V = TypeVar("_V")


def resample_last(points: Iterable[tuple[int, _V]], period_us: int) -> list[tuple[int, _V]]:
    """(period end, last value in the period) of time-ordered (ts, value) points."""
    out: list[tuple[int, _V]] = []
    for ts, value in points:
        end = ts - ts % period_us + period_us if ts % period_us else ts
        if out and out[-1][0] == end:
            out[-1] = (end, value)
        else:
            out.append((end, value))
    return out


def returns(values: Sequence[float]) -> list[float]:
    return [b / a - 1.0 for a, b in zip(values, values[1:])]


def sharpe(rets: Sequence[float], periods_per_year: float) -> float | None:
    n = len(rets)
    if n < 2:
        return None
    mean = math.fsum(rets) / n
    var = math.fsum((r - mean) ** 2 for r in rets) / (n - 1)
    if var <= 0.0:
        return None
    return mean / math.sqrt(var) * math.sqrt(periods_per_year)


def sortino(rets: Sequence[float], periods_per_year: float) -> float | None:
    n = len(rets)
    if n < 2:
        return None
    downside = math.fsum(min(r, 0.0) ** 2 for r in rets) / n
    if downside <= 0.0:
        return None
    return math.fsum(rets) / n / math.sqrt(downside) * math.sqrt(periods_per_year)


def max_drawdown(values: Iterable[float]) -> float:
    peak, worst = -math.inf, 0.0
    for v in values:
        if v > peak:
            peak = v
        elif peak > 0:
            worst = max(worst, 1.0 - v / peak)
    return worst


def fill_outcomes(fills: Iterable[dict]) -> list[tuple[float, float, float | None]]:
    """Per fill, in fill order: (its symbol's position before, after, the gross realized
    PnL when it reduces the position, else None), by average-cost accounting as
    ``core.portfolio``."""
    qty: dict[str, float] = {}
    avg: dict[str, float] = {}
    out: list[tuple[float, float, float | None]] = []
    for f in fills:
        sym, price = f["symbol"], f["price"]
        q = side_sign(f["side"]) * f["quantity"]
        old = qty.get(sym, 0.0)
        new = old + q
        pnl = None
        if old == 0.0 or (old > 0) == (q > 0):
            avg[sym] = (abs(old) * avg.get(sym, 0.0) + abs(q) * price) / abs(new)
        else:
            closed = min(abs(q), abs(old))
            pnl = closed * (price - avg[sym]) * (1.0 if old > 0 else -1.0)
            if abs(new) <= 1e-9 * max(abs(old), abs(q)):
                new, avg[sym] = 0.0, 0.0
            elif (new > 0) != (old > 0):
                avg[sym] = price
        qty[sym] = new
        out.append((old, new, pnl))
    return out


def closing_trade_pnls(fills: Iterable[dict]) -> list[float]:
    """Gross realized PnL of each fill that reduces a position, in fill order."""
    return [pnl for _, _, pnl in fill_outcomes(fills) if pnl is not None]


def summarize(curve: Sequence[tuple[int, float]], fills: Sequence[dict], period_us: int) -> dict:
    """The figures above for a resampled curve (ts, equity) and the run's fills."""
    values = [v for _, v in curve]
    rets = returns(values)
    ppy = US_PER_YEAR / period_us
    first, last = (values[0], values[-1]) if values else (math.nan, math.nan)
    span = curve[-1][0] - curve[0][0] if curve else 0
    annualize = span >= MIN_ANNUALIZED_DAYS * US_PER_DAY
    cagr = None
    if annualize and first > 0 and last > 0:
        try:
            cagr = math.exp(math.log(last / first) * (US_PER_YEAR / span)) - 1.0
        except OverflowError:
            cagr = None
    pnls = closing_trade_pnls(fills)
    notional = math.fsum(abs(f["quantity"]) * f["price"] for f in fills)
    mean_equity = math.fsum(values) / len(values) if values else math.nan
    return {
        "start_equity": first,
        "end_equity": last,
        "total_return": last / first - 1.0 if values else None,
        "cagr": cagr,
        "sharpe": sharpe(rets, ppy) if annualize else None,
        "sortino": sortino(rets, ppy) if annualize else None,
        "max_drawdown": max_drawdown(values),
        "win_rate": sum(p > 0 for p in pnls) / len(pnls) if pnls else None,
        "closing_trades": len(pnls),
        "turnover": notional / mean_equity if values and mean_equity else None,
        "traded_notional": notional,
        "span_us": span,
    }


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.4f} %"


def num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


_FORMATS = {
    "sharpe": ".3f",
    "sortino": ".3f",
    "turnover": ".4f",
    "start_equity": ",.2f",
    "end_equity": ",.2f",
    "traded_notional": ",.2f",
}


def display(key: str, value) -> str:
    """A figure of ``summarize`` as the command prints it and the report shows it."""
    if key in PERCENT:
        return pct(value)
    if key == "span_us":
        return "n/a" if value is None else span_text(value)
    if key in _FORMATS:
        return num(value, _FORMATS[key])
    return "n/a" if value is None else f"{value:,}"


def span_text(us: int) -> str:
    """A span in its largest fitting unit: 92 s, 45.0 min, 6.5 h, 3,120.0 days."""
    s = us / 1_000_000
    if s < 120:
        return f"{s:g} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 2 * 86_400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86_400:,.1f} days"


def annualized_note(metrics: dict) -> str | None:
    """Why the annualized figures are n/a, for a run too short for them (else None)."""
    span = metrics.get("span_us")  # absent from runs stored before it was recorded
    if span is None or span >= MIN_ANNUALIZED_DAYS * US_PER_DAY:
        return None
    return (
        f"CAGR, Sharpe and Sortino are not meaningful over an equity curve of {span_text(span)}: "
        f"annualized figures need at least {MIN_ANNUALIZED_DAYS} days"
    )

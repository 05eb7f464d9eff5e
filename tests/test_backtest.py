"""Backtests: performance figures on known series, the in-process engine's determinism,
kafka mode against in-process mode, isolation from live topics and tables, and a
backtest against the live pipeline over the same period."""
from __future__ import annotations

import math

import pytest

from ticktape.core import performance as perf

MIN = 60_000_000
T0 = 1_704_205_800_000_000  # 2024-01-02T14:30:00Z


# --- performance figures ----------------------------------------------------------------

def test_resample_last_keeps_the_last_value_per_period():
    points = [(T0, 1.0), (T0 + 1, 2.0), (T0 + MIN - 1, 3.0), (T0 + MIN, 4.0), (T0 + 3 * MIN + 5, 5.0)]
    assert perf.resample_last(points, MIN) == [(T0, 1.0), (T0 + MIN, 4.0), (T0 + 4 * MIN, 5.0)]


def test_figures_on_a_known_series():
    curve = [(T0 + i * MIN, v) for i, v in enumerate([100.0, 110.0, 99.0, 108.9, 108.9])]
    rets = [0.1, -0.1, 0.1, 0.0]
    ppy = 365 * 24 * 60
    mean = 0.025
    std = math.sqrt(sum((r - mean) ** 2 for r in rets) / 3)
    down = math.sqrt(0.01 / 4)
    out = perf.summarize(curve, [], MIN)
    assert out["total_return"] == pytest.approx(0.089, abs=1e-15)
    assert out["sharpe"] == pytest.approx(mean / std * math.sqrt(ppy), rel=1e-12)
    assert out["sortino"] == pytest.approx(mean / down * math.sqrt(ppy), rel=1e-12)
    assert out["max_drawdown"] == pytest.approx(0.1, abs=1e-15)  # 110 -> 99
    assert out["cagr"] is None  # +8.9 % in 4 minutes does not annualize to a float
    assert (out["win_rate"], out["closing_trades"], out["turnover"]) == (None, 0, 0.0)


def test_cagr_over_two_years():
    year = 365 * 86400 * 1_000_000
    out = perf.summarize([(T0, 100.0), (T0 + year, 90.0), (T0 + 2 * year, 121.0)], [], year)
    assert out["cagr"] == pytest.approx(0.1, rel=1e-12)
    assert out["max_drawdown"] == pytest.approx(0.1, rel=1e-12)


def test_degenerate_curves_have_no_ratios():
    flat = [(T0 + i * MIN, 100.0) for i in range(5)]
    out = perf.summarize(flat, [], MIN)
    assert (out["sharpe"], out["sortino"], out["max_drawdown"], out["total_return"]) == (None, None, 0.0, 0.0)
    one = perf.summarize([(T0, 100.0)], [], MIN)
    assert (one["cagr"], one["sharpe"]) == (None, None)


def _fill(symbol, side, qty, price):
    return {"symbol": symbol, "side": side, "quantity": qty, "price": price, "commission": 1.0}


def test_win_rate_and_turnover_from_fills():
    fills = [_fill("A", "BUY", 10, 100.0), _fill("A", "BUY", 10, 110.0),   # long 20 @ 105
             _fill("A", "SELL", 5, 104.0),                                  # closes 5: -5 (loss)
             _fill("A", "SELL", 25, 107.0),                                 # closes 15: +30, short 10 @ 107
             _fill("A", "BUY", 10, 100.0),                                  # closes 10: +70
             _fill("B", "SELL", 3, 50.0), _fill("B", "BUY", 3, 50.0)]       # short, flat: 0 (not a win)
    assert perf.closing_trade_pnls(fills) == [-5.0, 30.0, 70.0, 0.0]
    curve = [(T0, 1000.0), (T0 + MIN, 1000.0)]
    out = perf.summarize(curve, fills, MIN)
    assert out["win_rate"] == 0.5 and out["closing_trades"] == 4
    notional = 1000 + 1100 + 520 + 25 * 107 + 1000 + 150 + 150
    assert out["traded_notional"] == notional and out["turnover"] == notional / 1000.0

"""Throughput of the trading core: bars/s through strategy -> risk -> paper execution -> portfolio.

Pure core on one core, no I/O.  Synthetic input (built before timing): per bar of each
symbol a Bar and its Prediction (v2: it carries the bar's close and volatility_20).  Each
stage is timed on its own over the same input, then the whole chain as a backtest wires it
(one equity point per timestamp).
After one warm-up run each case runs ``--runs`` times; the table shows the median and the
spread (min-max) of the rates, and the JSON goes to bench/results/trading.json.

    python -m bench.bench_trading            # full run
    python -m bench.bench_trading --quick    # seconds-long smoke run
"""

from __future__ import annotations

import math

from bench.harness import Figure, bench_main, repeat, timed_rate
from ticktape.core import execution as ex
from ticktape.core import portfolio as pf
from ticktape.core import risk as rk
from ticktape.core import strategy as sg
from ticktape.risk_config import DEFAULT_RISK_CONFIG, load_risk_limits

T0 = 1_704_205_800_000_000
MIN = 60_000_000


def build(n_symbols: int, n_bars: int) -> list[tuple[dict, dict]]:
    events = []
    for i in range(n_bars):
        ts = T0 + i * MIN
        for k in range(n_symbols):
            sym = f"S{k:03d}"
            close = 100.0 + 10 * math.sin(i / 37 + k)
            bar = {
                "event_id": f"bar:{sym}:1m:{ts}",
                "symbol": sym,
                "interval": "1m",
                "ts": ts,
                "window_start": ts - MIN,
                "window_end": ts,
                "open": close - 0.1,
                "high": close + 0.2,
                "low": close - 0.2,
                "close": close,
                "volume": 1e4,
                "vwap": close,
                "trade_count": 50,
            }
            pred = {
                "event_id": f"pred:{sym}:1m:{ts}",
                "symbol": sym,
                "interval": "1m",
                "ts": ts,
                "model_name": "xgb",
                "model_version": "1",
                "p_up": 0.5 + 0.45 * math.sin(i / 11 + 2 * k),
                "horizon": 5,
                "features": {},
                "close": close,
                "volatility_20": 0.2,
            }
            events.append((bar, pred))
    return events


def run_chain(events, limits, stages=("strategy", "risk", "execution", "portfolio")) -> dict:
    strat = sg.Strategy(sg.StrategyConfig())
    risk = rk.Risk("paper", limits.for_account("paper"), 1e6)
    exe = ex.Execution(ex.ExecConfig())
    book = pf.Portfolio("paper", 1e6)
    counts = {"signals": 0, "orders": 0, "rejections": 0, "fills": 0, "equity_points": 0}
    last_ts = None
    for bar, pred in events:
        ts = bar["ts"]
        if "risk" in stages:
            rk.on_bar(risk, bar)
        if "execution" in stages:
            for fill in ex.on_bar(exe, bar):
                counts["fills"] += 1
                rk.on_fill(risk, fill)
                pf.apply_fill(book, fill)
        if "portfolio" in stages:
            pf.mark(book, bar["symbol"], bar["close"])
            if ts != last_ts:  # one equity point per timestamp
                pf.equity_event(book, ts, f"eq:paper:{ts}")
                counts["equity_points"] += 1
                last_ts = ts
        if "strategy" not in stages:
            continue
        signals = sg.on_prediction(strat, pred)
        counts["signals"] += len(signals)
        if "risk" not in stages:
            continue
        for sig in signals:
            for out in rk.on_signal(risk, sig):
                if "reason_code" in out:
                    counts["rejections"] += 1
                else:
                    counts["orders"] += 1
                    ex.on_order(exe, out)
    return counts


STAGES = (
    ("strategy", ("strategy",)),
    ("risk (marks)", ("risk",)),
    ("portfolio (marks + equity)", ("portfolio",)),
    ("whole chain", ("strategy", "risk", "execution", "portfolio")),
)


def run(quick: bool, runs: int) -> list[Figure]:
    symbols, bars = (20, 500) if quick else (50, 2000)
    limits = load_risk_limits(DEFAULT_RISK_CONFIG)
    events = build(symbols, bars)
    figures = []
    for name, stages in STAGES:
        counts = run_chain(events, limits, stages)

        def once(stages=stages) -> int:
            run_chain(events, limits, stages)
            return len(events)

        rates = repeat(lambda: timed_rate(once), runs)
        figures.append(
            Figure(
                "trading",
                f"{name} ({symbols} symbols x {bars} bars)",
                "bars/s",
                rates,
                detail={"bars": len(events), **counts},
            )
        )
    return figures


def main(argv=None) -> int:
    return bench_main("trading", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

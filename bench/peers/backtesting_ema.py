"""backtesting.py beside ticktape's in-process backtest (bench/bench_backtest.py): an EMA
12/26 cross per symbol, each symbol a Backtest of its own (separate accounts), over the
bars of a JSON file (argv[1]: a list of Bar events).  Prints one JSON line per run:
{"bars": N, "seconds": wall seconds of its Backtest.run calls, "trades": N}.

Run by bench_backtest in .venv-peers (bench/peers/requirements.txt), never imported by
ticktape: ``python backtesting_ema.py BARS.json RUNS``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import pandas as pd
from backtesting import Backtest, Strategy
from backtesting.lib import crossover


def ema(values, n: int):
    return pd.Series(values).ewm(span=n, adjust=False).mean().to_numpy()


class EmaCross(Strategy):
    fast = 12
    slow = 26

    def init(self):
        self.ema_fast = self.I(ema, self.data.Close, self.fast)
        self.ema_slow = self.I(ema, self.data.Close, self.slow)

    def next(self):
        if crossover(self.ema_fast, self.ema_slow):
            self.buy()
        elif crossover(self.ema_slow, self.ema_fast) and self.position:
            self.position.close()


def frames(bars: list[dict]) -> dict[str, pd.DataFrame]:
    by_symbol: dict[str, list[dict]] = {}
    for b in bars:
        by_symbol.setdefault(b["symbol"], []).append(b)
    out = {}
    for sym, rows in by_symbol.items():
        index = pd.to_datetime([r["window_start"] for r in rows], unit="us")
        out[sym] = pd.DataFrame(
            {
                "Open": [r["open"] for r in rows],
                "High": [r["high"] for r in rows],
                "Low": [r["low"] for r in rows],
                "Close": [r["close"] for r in rows],
                "Volume": [r["volume"] for r in rows],
            },
            index=index,
        )
    return out


def main() -> None:
    warnings.simplefilter("ignore")
    bars = json.load(open(sys.argv[1]))
    runs = int(sys.argv[2])
    data = frames(bars)
    for _ in range(runs + 1):  # the first: a warm-up
        seconds, trades = 0.0, 0
        for df in data.values():
            bt = Backtest(df, EmaCross, cash=1_000_000, commission=0.0, finalize_trades=True)
            started = time.perf_counter()
            stats = bt.run()
            seconds += time.perf_counter() - started
            trades += int(stats["# Trades"])
        print(json.dumps({"bars": len(bars), "seconds": seconds, "trades": trades}), flush=True)


if __name__ == "__main__":
    main()

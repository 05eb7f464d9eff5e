"""An EMA crossover without a model: long while the fast EMA of the closes is above the
slow one, flat (or short, with ``shorts``) while it is below.

    STRATEGY=examples.ema_cross:EmaCross STRATEGY_PARAMS='{"fast": 5, "slow": 20}' ticktape backtest ...

It trades on bars (``on_bar``): the strategy stage then reads the indicator stage's
output and needs no model.  The EMAs are its own (any spans, seeded with the first
close); ``bar.indicators["ema_12"]`` and ``["ema_26"]`` would give the indicator
stage's TA-Lib ones instead.  A position is sized once, when it is entered: ``notional``
over the close, in whole units.
"""

from __future__ import annotations

import math

from ticktape.api import Bar, Strategy, Target


class EmaCross(Strategy):
    name = "ema_cross"
    state_fields = ("fast_ema", "slow_ema", "bars")  # what a restart must restore

    def __init__(self, symbol: str, *, fast: int = 5, slow: int = 20, notional: float = 10_000.0, shorts: bool = False):
        super().__init__(symbol)
        if not (type(fast) is int and type(slow) is int and 1 <= fast < slow):
            raise ValueError(f"fast and slow must be whole numbers with 1 <= fast < slow, got {fast!r} and {slow!r}")
        if not (isinstance(notional, (int, float)) and 0 < notional < math.inf):
            raise ValueError(f"notional must be a positive number, got {notional!r}")
        if not isinstance(shorts, bool):
            raise ValueError(f"shorts must be true or false, got {shorts!r}")
        self.fast, self.slow, self.notional, self.shorts = fast, slow, float(notional), shorts
        self.fast_ema: float | None = None
        self.slow_ema: float | None = None
        self.bars = 0

    def on_bar(self, bar: Bar) -> Target | None:
        c = bar.close
        self.bars += 1
        if self.fast_ema is None or self.slow_ema is None:
            self.fast_ema = self.slow_ema = c
        else:
            self.fast_ema += 2.0 / (self.fast + 1) * (c - self.fast_ema)
            self.slow_ema += 2.0 / (self.slow + 1) * (c - self.slow_ema)
        if self.bars < self.slow:
            return None  # the slow EMA has not seen a full span yet
        if self.fast_ema > self.slow_ema:
            want = 1
        elif self.fast_ema < self.slow_ema:
            want = -1 if self.shorts else 0
        else:
            return None
        held = (self.target > 0) - (self.target < 0)
        if want == held:
            return None  # no rebalancing while the direction holds
        units = math.floor(self.notional / c) if want else 0
        relation = ">" if want == 1 else "<"
        return Target(
            want * units, f"ema{self.fast} {self.fast_ema:.4f} {relation} ema{self.slow} {self.slow_ema:.4f} @ {c:g}"
        )

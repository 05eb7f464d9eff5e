"""Bars of the seeded simulator (ticks → ``BarAggregator``): realistic training and test
data without a network.  Same arguments, same bars."""

from __future__ import annotations

from collections.abc import Sequence

from .bars import BarAggregator
from .intervals import interval_seconds
from .sim import MarketSimulator


def simulated_bars(
    symbols: Sequence[str], *, seed: int, start_us: int, minutes: float, interval: str = "1m", tick_rate: float = 20.0
) -> list[dict]:
    """Every bar of ``interval`` closing within ``minutes`` of event time after ``start_us``,
    in close order (a symbol gets a bar only for windows it traded in)."""
    end_us = start_us + int(minutes * 60e6)
    grace_us = 0
    sim = MarketSimulator(list(symbols), seed=seed, tick_rate=tick_rate, start_us=start_us)
    agg = BarAggregator([interval], grace_us)
    flush_at = end_us + interval_seconds(interval) * 1_000_000  # a tick here closes the last window
    out: list[dict] = []
    while agg.watermark is None or agg.watermark < flush_at:
        out.extend(agg.process(sim.next_chunk()).bars)
    return [b for b in out if b["window_end"] <= end_us]

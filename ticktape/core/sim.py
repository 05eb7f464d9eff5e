"""Deterministic market simulator (SPEC §7a ``sim``): same seed, same ticks.

Model, per step of ``1 / tick_rate`` seconds of event time:

* one symbol trades, chosen with fixed per-symbol activity weights (liquid names trade
  more often);
* prices are correlated geometric random walks: a market factor ``M`` moves every
  step, each symbol has a beta to it plus its own noise, accumulated over the time
  since its last trade, so ``log p = log p0 + beta * M(t) + I(t)``;
* quotes: a per-symbol spread (1–5 bps) around the trade, rounded to the cent;
* sizes: lognormal lots of 100 shares, scaled by a U-shaped intraday volume profile
  over the US session (13:30–20:00 UTC; outside it a low flat level).

Everything is drawn from one ``numpy`` PCG64 stream in fixed-size chunks, so output
depends only on (seed, symbols, tick_rate, start, clock) — not on how it is consumed.

A ``clock`` maps the steps' elapsed event time to instants: a market calendar's session
clock (``MarketHours.session_clock``) puts every tick inside a session, skipping nights,
weekends and holidays; the time a symbol waited over a closed period moves its price
like any other wait (an overnight gap).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

CHUNK = 4096
US_OPEN_S, US_CLOSE_S = 13 * 3600 + 1800, 20 * 3600
ANNUAL_VOL = 0.25  # typical single-stock volatility
SECONDS_PER_YEAR = 365 * 24 * 3600


def volume_profile(seconds_of_day: np.ndarray) -> np.ndarray:
    """Relative trading intensity: U-shaped in the session (3x at open, 2x at close)."""
    x = (seconds_of_day - US_OPEN_S) / (US_CLOSE_S - US_OPEN_S)
    in_session = (x >= 0) & (x <= 1)
    u = 1.0 + 2.0 * (1 - x) ** 8 + 1.0 * x**8
    return np.where(in_session, u, 0.3)


class MarketSimulator:
    def __init__(
        self,
        symbols: list[str],
        *,
        seed: int,
        tick_rate: float,
        start_us: int,
        source: str = "sim",
        clock: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        if not symbols:
            raise ValueError("the simulator needs at least one symbol")
        if tick_rate <= 0:
            raise ValueError("tick rate must be positive")
        self.symbols = list(symbols)
        self.source = source
        self.step_us = max(1, round(1e6 / tick_rate))
        self.start_us = start_us
        self.clock = clock
        self._rng = np.random.Generator(np.random.PCG64(seed))
        n = len(self.symbols)
        # fixed per-symbol parameters, drawn first so they do not depend on run length
        self._price = self._rng.uniform(20.0, 500.0, n)
        self._beta = self._rng.uniform(0.6, 1.4, n)
        self._spread_bps = self._rng.uniform(1.0, 5.0, n)
        weights = self._rng.pareto(1.5, n) + 1.0
        self._cum_weights = np.cumsum(weights / weights.sum())
        self._beta_list = self._beta.tolist()
        self._half_spread = (self._spread_bps * 1e-4 / 2).tolist()
        self._log_price = np.log(self._price).tolist()
        self._market = 0.0
        self._market_at_last = [0.0] * n
        self._last_us = [start_us] * n
        self._seq = [0] * n
        self._step = 0
        self._sigma_step = ANNUAL_VOL * math.sqrt(self.step_us / 1e6 / SECONDS_PER_YEAR)

    def ticks(self) -> Iterator[dict]:
        """Endless tick stream in event-time order."""
        while True:
            yield from self.next_chunk()

    def next_chunk(self) -> list[dict]:
        rng = self._rng
        k = CHUNK
        elapsed = (self._step + np.arange(1, k + 1, dtype=np.int64)) * self.step_us
        ts: Any = self.start_us + elapsed if self.clock is None else self.clock(elapsed)  # an array, then its list
        self._step += k
        who: Any = np.searchsorted(self._cum_weights, rng.random(k), side="right")  # an array, then its list
        who = np.minimum(who, len(self.symbols) - 1)
        market_moves = np.cumsum(rng.standard_normal(k) * self._sigma_step * 0.7) + self._market
        self._market = float(market_moves[-1])
        idio = rng.standard_normal(k)
        lots = np.ceil(rng.lognormal(0.0, 0.8, k) * volume_profile((ts // 1_000_000) % 86400))
        bid_lots = rng.integers(1, 20, k)
        ask_lots = rng.integers(1, 20, k)
        # plain Python lists: indexing numpy scalars one by one is several times slower
        who, ts, market_moves = who.tolist(), ts.tolist(), market_moves.tolist()
        idio, lots = idio.tolist(), (lots * 100).tolist()
        bid_lots, ask_lots = (bid_lots * 100.0).tolist(), (ask_lots * 100.0).tolist()
        log_price, beta, spread = self._log_price, self._beta_list, self._half_spread
        market_at_last, last_us, seq = self._market_at_last, self._last_us, self._seq
        symbols, source, step_us, noise = self.symbols, self.source, self.step_us, self._sigma_step * 0.7
        out = []
        for i in range(k):
            s, t, m = who[i], ts[i], market_moves[i]
            elapsed_steps = max(1, (t - last_us[s]) // step_us)
            log_price[s] += beta[s] * (m - market_at_last[s]) + idio[i] * noise * math.sqrt(elapsed_steps)
            market_at_last[s] = m
            last_us[s] = t
            seq[s] += 1
            price = round(math.exp(log_price[s]), 2)
            half = max(0.01, round(price * spread[s], 2))
            out.append(
                {
                    "event_id": f"{source}:{symbols[s]}:{seq[s]}",
                    "symbol": symbols[s],
                    "ts": t,
                    "source": source,
                    "seq": seq[s],
                    "price": price,
                    "size": lots[i],
                    "bid": round(price - half, 2),
                    "ask": round(price + half, 2),
                    "bid_size": bid_lots[i],
                    "ask_size": ask_lots[i],
                }
            )
        return out

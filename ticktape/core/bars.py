"""Bar aggregation (SPEC §4): tumbling event-time windows per symbol, pure and fast.

One ``BarAggregator`` serves one input partition (a Kafka partition, or a whole file in
a backtest).  Its watermark is the partition's *stream time*: the largest event time
seen in it, quote-only ticks included.  A window ``[start, start + width)`` of every
symbol closes once ``watermark >= window end + grace``; a trade whose window is already
closed is *late* for that interval (reported, never merged).  Because closing and
lateness depend only on the watermark, the output is a function of the partition's
tick sequence alone — however it is cut into batches.  The watermark moves only with
data: the last windows close when a later tick arrives, or a Heartbeat (a source's
promise, on the log, that nothing older follows in the partition; see ``is_heartbeat``).

Event time is bounded: called with ``not_after``, a tick (or heartbeat) later than it is
invalid — reported, never applied — so one far-future timestamp cannot move the
watermark and make every later tick late.

Bar fields are those of ``schemas/bar.v1.avsc``: ``open``/``close`` are the prices of
the earliest/latest trade by event time (ties: arrival order), ``volume`` the sum of
sizes, ``vwap = sum(price * size) / volume`` — or ``close`` when the volume is 0 (only
zero-size trades).  Only ticks with both ``price`` and ``size`` form bars.

Positions (e.g. Kafka offsets) make redelivery harmless: each symbol remembers the
position of the last trade it applied and skips trades at or before it, so a worker
that restarts from older committed offsets with newer saved state counts nothing twice.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from functools import reduce
from itertools import islice, repeat
from operator import add, gt, mul
from typing import NamedTuple, cast

from .intervals import interval_seconds
from .trading import iso

_INF = float("inf")
# accumulator slots of one open window
_O, _H, _L, _C, _VOL, _PV, _N, _OTS, _CTS = range(9)


class BarBatch(NamedTuple):
    """What one call of ``BarAggregator.process`` produced."""

    bars: list[dict]  # closed bars, ordered by (window_end, symbol, interval length)
    late: list[tuple[int, tuple[str, ...]]]  # (index in the batch, intervals it was late for)
    invalid: list[tuple[int, str]]  # (index in the batch, reason): non-finite price, negative size, too far ahead


def is_heartbeat(event: dict) -> bool:
    """A Heartbeat (``schemas/heartbeat.v1.avsc``) among ticks: it has no symbol.  It moves
    its partition's watermark like a quote-only tick and forms no bar."""
    return "symbol" not in event


class BarAggregator:
    def __init__(self, intervals: Sequence[str], grace_us: int):
        if not intervals:
            raise ValueError("at least one bar interval is needed")
        if grace_us < 0:
            raise ValueError(f"grace must not be negative, got {grace_us} µs")
        self.intervals = tuple(intervals)
        self.grace_us = int(grace_us)
        self._widths = tuple(interval_seconds(i) * 1_000_000 for i in self.intervals)
        self.watermark: int | None = None
        # symbol -> [last applied position or None, {window start: accumulator} per interval]
        self._symbols: dict[str, list] = {}
        self._next_close = _INF  # smallest end + grace of any open window
        self._dirty: set[str] = set()

    # -- processing ------------------------------------------------------------------
    def add(self, tick: dict, position: int | None = None) -> BarBatch:
        return self.process([tick], None if position is None else [position])

    def process(
        self, ticks: Sequence[dict], positions: Sequence[int] | None = None, not_after: int | None = None
    ) -> BarBatch:
        """Apply ticks (and heartbeats) in order; return the bars this closed, the late and
        invalid ticks."""
        # a heartbeat's None symbol is never a key: it has no price either (a quote-only tick)
        return self.process_columns(
            cast("list[str]", [t.get("symbol") for t in ticks]),
            [t["ts"] for t in ticks],
            [t.get("price") for t in ticks],
            [t.get("size") for t in ticks],
            positions,
            not_after,
        )

    def process_columns(
        self,
        symbols: Iterable[str],
        times: Iterable[int],
        prices: Iterable,
        sizes: Iterable,
        positions: Iterable[int] | None = None,
        not_after: int | None = None,
    ) -> BarBatch:
        """``process`` over ticks given as columns (tick ``i`` = the ``i``-th item of each)."""
        late, invalid = self._apply(symbols, times, prices, sizes, positions, not_after)
        return BarBatch(self._close(), late, invalid)

    def process_runs(
        self, runs: Iterable[tuple[str, Sequence[int], Sequence, Sequence, int]], not_after: int | None = None
    ) -> BarBatch:
        """``process`` over runs of one symbol's ticks — ``(symbol, times, prices, sizes,
        first position)``, a TickBatch message each, tick ``i`` at position ``first + i`` —
        with the same output.  A run of valid trades in time order, new and not late, is
        folded into its windows a window at a time; any other run goes tick by tick."""
        late: list[tuple[int, tuple[str, ...]]] = []
        invalid: list[tuple[int, str]] = []
        base = 0
        limit = _INF if not_after is None else not_after
        for symbol, times, prices, sizes, first in runs:
            n = len(times)
            if not (n and max(times) <= limit and self._fold_run(symbol, times, prices, sizes, first)):
                run_late, run_invalid = self._apply(
                    repeat(symbol, n), times, prices, sizes, range(first, first + n), not_after
                )
                late += [(base + i, late_for) for i, late_for in run_late]
                invalid += [(base + i, reason) for i, reason in run_invalid]
            base += n
        return BarBatch(self._close(), late, invalid)

    def _fold_run(self, sym: str, times: Sequence[int], prices: Sequence, sizes: Sequence, first: int) -> bool:
        """Apply a run of one symbol's ticks a window at a time, when that is the same as
        tick by tick: every tick a valid trade, times in order, positions after the
        symbol's last, the first tick (so all) in open windows.  False, changing nothing,
        when the run is not such.  Sums still add one tick at a time (``reduce``), so the
        floats are those of the tick-by-tick path, bit for bit."""
        n = len(times)
        if n < 2 or None in prices or None in sizes:
            return False
        # NaN or ±inf anywhere makes a sum non-finite; min catches a negative price or size
        if not (sum(prices) < _INF and min(prices) >= 0.0 and sum(sizes) < _INF and min(sizes) >= 0.0):
            return False
        if any(map(gt, times, islice(times, 1, None))):
            return False
        state = self._symbols.get(sym)
        if state is not None and state[0] is not None and first <= state[0]:
            return False
        wm = self.watermark if self.watermark is not None else -(1 << 63)
        grace, t0 = self.grace_us, times[0]
        # a window closes after its own ticks' times, so only a watermark from before
        # the run can make them late, and then the first tick's window first
        if any(t0 - t0 % width + width + grace <= wm for width in self._widths):
            return False
        if state is None:
            state = self._symbols[sym] = [None, *({} for _ in self._widths)]
        state[0] = first + n - 1
        self._dirty.add(sym)
        next_close = self._next_close
        for k, width in enumerate(self._widths, 1):
            windows = state[k]
            i = 0
            while i < n:
                start = times[i] - times[i] % width
                j = bisect_left(times, start + width, i)
                p, z = prices[i:j], sizes[i:j]
                acc = windows.get(start)
                if acc is None:
                    windows[start] = [
                        p[0],
                        max(p),
                        min(p),
                        p[-1],
                        reduce(add, z),
                        reduce(add, map(mul, p, z)),
                        j - i,
                        times[i],
                        times[j - 1],
                    ]
                    next_close = min(next_close, start + width + grace)
                else:
                    acc[_H] = max(acc[_H], max(p))  # max and min keep the first of equals,
                    acc[_L] = min(acc[_L], min(p))  # as the tick-by-tick comparisons do
                    if times[i] < acc[_OTS]:
                        acc[_O], acc[_OTS] = p[0], times[i]
                    if times[j - 1] >= acc[_CTS]:
                        acc[_C], acc[_CTS] = p[-1], times[j - 1]
                    acc[_VOL] = reduce(add, z, acc[_VOL])
                    acc[_PV] = reduce(add, map(mul, p, z), acc[_PV])
                    acc[_N] += j - i
                i = j
        self._next_close = next_close
        self.watermark = max(wm, times[-1])
        return True

    def _apply(
        self,
        symbols: Iterable[str],
        times: Iterable[int],
        prices: Iterable,
        sizes: Iterable,
        positions: Iterable[int] | None,
        not_after: int | None = None,
    ) -> tuple[list, list]:
        """Apply ticks one by one (no closing); their (late, invalid) lists."""
        limit = _INF if not_after is None else not_after
        wm = self.watermark if self.watermark is not None else -(1 << 63)
        widths, grace, table, dirty = self._widths, self.grace_us, self._symbols, self._dirty
        intervals = self.intervals
        windows = tuple(enumerate(widths, 1))
        next_close = self._next_close
        late: list[tuple[int, tuple[str, ...]]] = []
        invalid: list[tuple[int, str]] = []
        last_sym = state = None
        idx = -1
        for idx, (sym, ts, price, size, pos) in enumerate(
            zip(symbols, times, prices, sizes, repeat(None) if positions is None else positions)
        ):
            if ts > limit:
                assert not_after is not None  # limit is infinite without it
                invalid.append(
                    (
                        idx,
                        f"event time {iso(ts)} is past {iso(not_after)}: more than "
                        "MAX_EVENT_AHEAD_MS ahead of the wall clock",
                    )
                )
                continue
            if price is None or size is None:  # quote only: moves the watermark, forms no bar
                if ts > wm:
                    wm = ts
                continue
            if not (size >= 0.0 and 0.0 <= price < _INF):  # NaN fails both comparisons
                invalid.append((idx, f"invalid trade: price={price!r} size={size!r}"))
                continue
            if ts > wm:
                wm = ts
            if sym is not last_sym:  # a batch's ticks share one symbol object
                state = table.get(sym)
                if state is None:
                    state = table[sym] = [None, *({} for _ in widths)]
                last_sym = sym
            assert state is not None  # set at the first trade (last_sym starts as None)
            if pos is not None:
                if state[0] is not None and pos <= state[0]:
                    continue  # applied before a restart
                state[0] = pos
            dirty.add(sym)
            late_for: tuple[str, ...] | None = None
            for k, width in windows:
                start = ts - ts % width
                close_at = start + width + grace
                if close_at <= wm:
                    late_for = (late_for or ()) + (intervals[k - 1],)
                    continue
                acc = state[k].get(start)
                if acc is None:
                    state[k][start] = [price, price, price, price, size, price * size, 1, ts, ts]
                    if close_at < next_close:
                        next_close = close_at
                    continue
                if price > acc[_H]:
                    acc[_H] = price
                elif price < acc[_L]:
                    acc[_L] = price
                if ts < acc[_OTS]:
                    acc[_O] = price
                    acc[_OTS] = ts
                if ts >= acc[_CTS]:
                    acc[_C] = price
                    acc[_CTS] = ts
                acc[_VOL] += size
                acc[_PV] += price * size
                acc[_N] += 1
            if late_for is not None:
                late.append((idx, late_for))
        if idx >= 0:
            self.watermark = wm
        self._next_close = next_close
        return late, invalid

    def _close(self) -> list[dict]:
        """Close every window whose end + grace the watermark has reached."""
        if self.watermark is None or self.watermark < self._next_close:
            return []  # the common case: nothing is due
        wm, grace = self.watermark, self.grace_us
        out = []
        next_close = _INF
        for sym, state in self._symbols.items():
            for k, width in enumerate(self._widths, 1):
                wins = state[k]
                if not wins:
                    continue
                for start in [s for s in wins if s + width + grace <= wm]:
                    out.append((start + width, sym, width, self._bar(sym, k - 1, start, width, wins.pop(start))))
                    self._dirty.add(sym)
                for start in wins:
                    next_close = min(next_close, start + width + grace)
        self._next_close = next_close
        out.sort(key=lambda t: t[:3])
        return [t[3] for t in out]

    def _bar(self, symbol: str, i: int, start: int, width: int, acc: list) -> dict:
        interval = self.intervals[i]
        volume = acc[_VOL]
        return {
            "event_id": f"{symbol}:{interval}:{start}",
            "symbol": symbol,
            "interval": interval,
            "ts": start + width,
            "window_start": start,
            "window_end": start + width,
            "open": acc[_O],
            "high": acc[_H],
            "low": acc[_L],
            "close": acc[_C],
            "volume": volume,
            "vwap": acc[_PV] / volume if volume else acc[_C],
            "trade_count": acc[_N],
        }

    # -- state -----------------------------------------------------------------------
    def take_dirty(self) -> list[str]:
        """Symbols whose state changed since the last call, sorted."""
        out = sorted(self._dirty)
        self._dirty.clear()
        return out

    @property
    def symbols(self) -> list[str]:
        return sorted(self._symbols)

    def symbol_state(self, symbol: str) -> dict:
        """One symbol's state as plain JSON-able data (open windows, last position)."""
        state = self._symbols[symbol]
        return {
            "pos": state[0],
            "open": {
                iv: [[s, *state[k][s]] for s in sorted(state[k])] for k, iv in enumerate(self.intervals, 1) if state[k]
            },
        }

    def set_symbol_state(self, symbol: str, data: dict) -> None:
        """Restore one symbol saved by ``symbol_state`` (windows of other intervals are dropped)."""
        state = [data["pos"], *({} for _ in self._widths)]
        for k, (iv, width) in enumerate(zip(self.intervals, self._widths), 1):
            for start, *acc in data["open"].get(iv, ()):
                state[k][start] = acc
                self._next_close = min(self._next_close, start + width + self.grace_us)
        self._symbols[symbol] = state

    def to_state(self) -> dict:
        return {"watermark": self.watermark, "symbols": {sym: self.symbol_state(sym) for sym in sorted(self._symbols)}}

    @classmethod
    def from_state(cls, state: dict, intervals: Sequence[str], grace_us: int) -> "BarAggregator":
        agg = cls(intervals, grace_us)
        agg.watermark = state["watermark"]
        for sym, data in state["symbols"].items():
            agg.set_symbol_state(sym, data)
        return agg

"""TickBatch events (``schemas/tick_batch.v1.avsc``) and the batcher that forms them.

A TickBatch is consecutive ticks of one symbol from one source in one message, as
columns: tick ``i`` is the ``i``-th item of every array of ``ticks``.  It travels on
``md.ticks`` next to single Tick events, keyed by its symbol like them, so per-symbol
order and partitioning are those of the ticks it holds.  Every consumer expands it back
into the same Tick events; a batch of one tick is sent as a plain Tick.

Why: a stream processor pays a fixed cost per Kafka message, several times the cost of
aggregating a tick, so at tens of thousands of ticks per second the message, not the
tick, is the unit to save on.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_TICKS = 65536  # ticks per batch: a tick's position in a topic is offset * MAX_TICKS + index
COLUMNS = ("ts", "price", "size", "bid", "ask", "bid_size", "ask_size", "seq", "event_id")


def make_batch(ticks: Sequence[dict]) -> dict:
    """The TickBatch event of consecutive ticks of one symbol and source."""
    if not 0 < len(ticks) <= MAX_TICKS:
        raise ValueError(f"a batch holds 1 to {MAX_TICKS} ticks, not {len(ticks)}")
    first = ticks[0]
    symbol, source = first["symbol"], first["source"]
    if any(t["symbol"] != symbol or t["source"] != source for t in ticks):
        raise ValueError("a batch holds ticks of one symbol and one source")
    return {
        "event_id": f"{first['event_id']}+{len(ticks)}",
        "symbol": symbol,
        "ts": ticks[-1]["ts"],
        "source": source,
        "ticks": {c: [t[c] for t in ticks] for c in COLUMNS},
    }


def expand(batch: dict) -> list[dict]:
    """The Tick events of a TickBatch, in order (ValueError when its columns disagree)."""
    cols = batch["ticks"]
    n = len(cols["ts"])
    if not 0 < n <= MAX_TICKS or any(len(cols[c]) != n for c in COLUMNS):
        raise ValueError(
            f"tick batch {batch['event_id']}: columns of lengths "
            f"{[len(cols[c]) for c in COLUMNS]} (1 to {MAX_TICKS}, all equal)"
        )
    symbol, source = batch["symbol"], batch["source"]
    return [
        {
            "event_id": eid,
            "symbol": symbol,
            "ts": ts,
            "source": source,
            "seq": seq,
            "price": price,
            "size": size,
            "bid": bid,
            "ask": ask,
            "bid_size": bid_size,
            "ask_size": ask_size,
        }
        for ts, price, size, bid, ask, bid_size, ask_size, seq, eid in zip(*(cols[c] for c in COLUMNS))
    ]


def events_of(event_type: str, record: dict) -> list[dict]:
    """The Tick events a decoded ``tick`` or ``tick_batch`` message carries."""
    return expand(record) if event_type == "tick_batch" else [record]


class TickBatcher:
    """Groups ticks per (topic, symbol, source); a group is sent when it holds
    ``max_ticks``, when a tick ``linger_us`` newer in event time than its first one is
    added (a replay at full speed), or ``linger_s`` after it started (``due``).

    Ticks of one symbol keep their order; ticks of different symbols are reordered by
    at most the linger, which a bar window's grace absorbs when the linger is shorter.
    Pure: the caller passes the clock.
    """

    def __init__(self, max_ticks: int, linger_ms: float):
        if not 1 < max_ticks <= MAX_TICKS:
            raise ValueError(f"batches of 2 to {MAX_TICKS} ticks, not {max_ticks}")
        self.max_ticks = max_ticks
        self.linger_s = linger_ms / 1000
        self.linger_us = int(linger_ms * 1000)
        # (topic, symbol, source) -> [started (clock), first tick's ts, ticks]; insertion order = start order
        self._open: dict[tuple, list] = {}

    def __len__(self) -> int:
        return sum(len(g[2]) for g in self._open.values())

    def add(self, topic: str, tick: dict, now: float) -> list[tuple[str, list[dict]]]:
        """Add a tick; the (topic, ticks) groups this completes, oldest first."""
        key = (topic, tick["symbol"], tick["source"])
        ready = []
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = [now, tick["ts"], []]
        group[2].append(tick)
        if len(group[2]) >= self.max_ticks:
            del self._open[key]
            ready.append((topic, group[2]))
        horizon = tick["ts"] - self.linger_us
        while self._open:
            first_key = next(iter(self._open))
            if self._open[first_key][1] > horizon:
                break
            ready.append((first_key[0], self._open.pop(first_key)[2]))
        return ready

    def due(self, now: float) -> list[tuple[str, list[dict]]]:
        """Groups started ``linger`` or longer before ``now``, oldest first."""
        ready = []
        while self._open:
            first_key = next(iter(self._open))
            if self._open[first_key][0] + self.linger_s > now:
                break
            ready.append((first_key[0], self._open.pop(first_key)[2]))
        return ready

    def drain(self) -> list[tuple[str, list[dict]]]:
        """Every open group, oldest first (on flush and stop)."""
        ready = [(key[0], group[2]) for key, group in self._open.items()]
        self._open.clear()
        return ready

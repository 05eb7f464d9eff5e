"""Replay helpers without I/O: which partition a key goes to, the time-range rule, and
the merge of partition streams into one time-ordered stream.

Partitioning: ``partition_for(key, n) = crc32(key) % n`` — the default partitioner of
the project's producers (librdkafka's ``consistent_random`` for non-empty keys), so a
file or database replay lands every symbol in the partition a live producer would have
used, and an in-process backtest can group ticks by partition without a broker.

Time range: an event is in ``[start, end]`` (µs, both inclusive, None = open) by its own
event time; a partition of a topic is finished at its first event after ``end`` (events
of a partition are in event-time order up to the bars' grace, and a tick that late
cannot change a bar that closes within the range).
"""

from __future__ import annotations

import heapq
import zlib


def partition_for(key: str | bytes, partitions: int) -> int:
    if isinstance(key, str):
        key = key.encode()
    return zlib.crc32(key) % partitions


def in_range(ts: int, start: int | None, end: int | None) -> bool:
    return (start is None or ts >= start) and (end is None or ts <= end)


class PartitionMerger:
    """Merge per-partition streams (each kept in its own order) by event time.

    ``add`` buffers an item of a partition; ``seen`` records that a partition got as far
    as ``ts`` without an item to emit (filtered out); ``finish`` says a partition will
    get no more.  ``ready()`` pops, in (ts, partition, arrival) order, the items no
    unfinished partition can still precede: each other partition has a buffered item or
    has been seen at or beyond the item's time.  ``drain()`` pops the rest.
    """

    def __init__(self, partitions):
        self._buf: dict[int, list] = {p: [] for p in partitions}  # FIFO per partition
        self._head: dict[int, int] = {p: 0 for p in partitions}
        self._frontier: dict[int, int] = {p: -(1 << 63) for p in partitions}
        self._open = set(partitions)
        self._heap: list = []  # (ts, partition, n, item) of each partition's head
        self._n = 0

    def add(self, partition: int, ts: int, item) -> None:
        buf = self._buf[partition]
        buf.append((ts, item))
        if len(buf) - self._head[partition] == 1:
            self._push_head(partition)
        if ts > self._frontier[partition]:
            self._frontier[partition] = ts

    def seen(self, partition: int, ts: int) -> None:
        if ts > self._frontier[partition]:
            self._frontier[partition] = ts

    def finish(self, partition: int) -> None:
        self._open.discard(partition)

    def buffered(self, partition: int) -> int:
        return len(self._buf[partition]) - self._head[partition]

    def _push_head(self, p: int) -> None:
        ts, item = self._buf[p][self._head[p]]
        self._n += 1
        heapq.heappush(self._heap, (ts, p, self._n, item))

    def _pop(self):
        ts, p, _, item = heapq.heappop(self._heap)
        self._head[p] += 1
        buf = self._buf[p]
        if self._head[p] == len(buf):
            buf.clear()
            self._head[p] = 0
        else:
            if self._head[p] > 4096:  # compact the consumed prefix
                del buf[: self._head[p]]
                self._head[p] = 0
            self._push_head(p)
        return p, ts, item

    def ready(self):
        out = []
        heap = self._heap
        while heap:
            ts, p = heap[0][0], heap[0][1]
            if any(q != p and self._head[q] == len(self._buf[q]) and self._frontier[q] < ts for q in self._open):
                break
            out.append(self._pop())
        return out

    def drain(self):
        out = []
        while self._heap:
            out.append(self._pop())
        return out

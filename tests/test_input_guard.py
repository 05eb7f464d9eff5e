"""``InputGuard`` on the real broker: the records a stage did not get from Faust.

Faust can lose messages it took from the consumer; the guard re-reads a hole when a
later message shows it, and ``tails`` reads a lost tail, which no later message shows.
"""

from __future__ import annotations

import asyncio

from test_worker import produce

from stream_processors.app import InputGuard
from ticktape import kafka_clients


def test_tails_reads_past_the_next_offset_only_of_partitions_that_stood_still(settings):
    kafka_clients.ensure_topics(settings)
    topic = settings.topic("md.ticks")
    placed = produce(settings, [(b"K", b"v%d" % i, 0) for i in range(10)] + [(b"K", b"w", 1)])
    assert placed == [(0, i) for i in range(10)] + [(1, 0)]
    guard = InputGuard(settings, still_checks=1)
    p0, p1, p2 = (topic, 0), (topic, 1), (topic, 2)
    guard.expect(*p0, 4)
    guard.expect(*p1, 1)
    guard.expect(*p2, 0)  # an empty partition

    async def run():
        first = await guard.tails({p0, p1, p2})  # nothing to compare with yet
        guard.expect(*p1, 1)  # delivered in between: still the same next offset
        second = await guard.tails({p0, p1})  # p2 is no longer assigned
        guard.expect(*p0, 7)  # p0 moved on
        third = await guard.tails({p0, p1})
        return first, second, third

    first, second, third = asyncio.run(run())
    assert first == []
    assert [(r.partition, r.offset, r.key, r.value) for r in second] == [
        (0, i, b"K", b"v%d" % i) for i in range(4, 10)
    ]  # p1 is at its end: nothing
    assert third == []  # p0 moved since the last look, p1 has nothing past its end


def test_a_hole_read_stops_at_its_end_or_at_the_end_of_the_log(settings):
    kafka_clients.ensure_topics(settings)
    topic = settings.topic("md.ticks")
    produce(settings, [(b"K", b"v%d" % i, 0) for i in range(3)])
    guard = InputGuard(settings)
    records = guard._read({(topic, 0): (1, 10)})  # offsets 3..9 do not exist (yet)
    assert [(r.offset, r.value) for r in records] == [(1, b"v1"), (2, b"v2")]
    assert [r.offset for r in guard._read({(topic, 0): (0, 2)})] == [0, 1]  # a hole ends where delivery resumed
    assert [r.offset for r in guard._read({(topic, 0): (0, None)}, limit=2)] == [0, 1]


def test_watch_takes_assigned_partitions_nothing_came_from_from_their_saved_offsets(settings):
    """After a crash Faust may deliver nothing more of a partition its commits had passed:
    ``watch`` starts such a partition at the offset the stage saved (or its first), and
    ``tails`` then reads what lies past it."""
    kafka_clients.ensure_topics(settings)
    topic = settings.topic("md.ticks")
    produce(settings, [(b"K", b"v%d" % i, 0) for i in range(5)] + [(b"K", b"w%d" % i, 1) for i in range(2)])
    guard = InputGuard(settings, still_checks=1)
    p0, p1, p2 = (topic, 0), (topic, 1), (topic, 2)
    saved = {p0: 3}  # p0's checkpoint holds offsets 0..2; p1 and p2 (empty) have none

    async def run():
        await guard.watch({p0, p1, p2}, lambda t, p: saved.get((t, p)))
        first = await guard.tails({p0, p1, p2})  # nothing to compare with yet
        second = await guard.tails({p0, p1, p2})
        return first, second

    first, second = asyncio.run(run())
    assert first == []
    assert sorted((r.partition, r.offset, r.value) for r in second) == [
        (0, 3, b"v3"),
        (0, 4, b"v4"),
        (1, 0, b"w0"),
        (1, 1, b"w1"),
    ]


def test_tails_reads_a_partition_once_it_stood_still_over_still_checks_calls_and_then_counts_again(settings):
    """A stage behind its input (not yet fetched) moves within a few checks: reading its
    tail then would only read what the consumer is about to deliver."""
    kafka_clients.ensure_topics(settings)
    topic = settings.topic("md.ticks")
    produce(settings, [(b"K", b"v%d" % i, 0) for i in range(3)])
    guard = InputGuard(settings, still_checks=3)
    p0 = (topic, 0)
    guard.expect(*p0, 1)

    async def run():
        reads = []
        for call in range(9):
            if call == 2:
                guard.expect(*p0, 2)  # it moved: counting starts again
            reads.append([r.offset for r in await guard.tails({p0})])
        return reads

    # calls 2..5 see 2 standing still; read at 5, then again three calls later
    assert asyncio.run(run()) == [[], [], [], [], [], [2], [], [], [2]]

"""save_state's promises, without a broker: a deleted entry goes to the changelog as a
real tombstone (no value), a state too large for one record is refused, naming the
table, key and size, before anything of the batch is sent, and a stop while it waits for
the broker leaves the sent records be."""

from __future__ import annotations

import asyncio
import json

import pytest

from stream_processors.app import MAX_STATE_RECORD, StateTooLarge, delivered, save_state


class Table:
    """What save_state uses of a Faust table: its data, its name, send_changelog."""

    name = "risk"

    def __init__(self):
        self.data, self.sent = {}, []

    def send_changelog(self, partition, key, value, key_serializer=None, value_serializer=None):
        self.sent.append((partition, key, value, value_serializer))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def test_deletes_are_tombstones_and_values_are_json():
    table = Table()
    table.data["AAPL@1"] = {"p": 0}
    asyncio.run(save_state(table, [(0, "AAPL@1", None), (0, "AAPL", {"p": 0, "x": 1.5})]))
    assert table.sent == [(0, "AAPL@1", None, "raw"), (0, "AAPL", json.dumps({"p": 0, "x": 1.5}).encode(), "raw")]
    assert table.data == {"AAPL": {"p": 0, "x": 1.5}}


def test_a_state_too_large_is_refused_with_its_key_and_size():
    table = Table()
    big = {"p": 0, "blob": "x" * MAX_STATE_RECORD}
    with pytest.raises(
        StateTooLarge,
        match=r"table risk: the state of key 'paper' is 900,0\d\d bytes, more than "
        r"the 900,000 a changelog record may hold",
    ):
        asyncio.run(save_state(table, [(0, "AAPL", {"p": 0}), (0, "MSFT", {"p": 0}), (0, "paper", big)]))
    assert table.sent == [] and table.data == {}  # nothing of the batch went out


def test_a_stop_while_waiting_for_deliveries_leaves_them_to_the_producer():
    """The producer completes each sent record's future from its own callback; had the
    waiter's cancel cancelled them, that callback would fail ("invalid state")."""

    async def main():
        loop = asyncio.get_running_loop()
        sent = [loop.create_future() for _ in range(3)]
        waiter = asyncio.ensure_future(delivered(sent))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        for future in sent:
            future.set_result(None)  # what the producer's callback does
        return [f.cancelled() for f in sent]

    assert asyncio.run(main()) == [False, False, False]


def test_deliveries_are_all_awaited_and_the_first_failure_raised():
    async def main():
        loop = asyncio.get_running_loop()
        sent = [loop.create_future() for _ in range(3)]
        loop.call_soon(sent[2].set_result, None)
        loop.call_later(0.01, sent[1].set_exception, KeyError("the broker refused it"))
        loop.call_later(0.02, sent[0].set_result, None)
        with pytest.raises(KeyError, match="refused"):
            await delivered(sent)
        return [f.done() for f in sent]

    assert asyncio.run(main()) == [True, True, True]
    asyncio.run(delivered([]))

"""The worker's consumer hands a message to the streams in the drain loop's own task when
the conductor's callback never suspends, and finishes one that does in a task of its own,
under Faust's ``wait_first``: the callback sees what it waited for, a cancel reaches it,
and a stop or suspended flow ends the drain loop's wait as in Faust."""

from __future__ import annotations

import asyncio

import pytest

from stream_processors.app import build_app
from stream_processors.consumer import Consumer
from ticktape.config import settings as make_settings


def consumer_with(callback) -> Consumer:
    consumer = build_app(make_settings(kafka_bootstrap_servers="127.0.0.1:1")).consumer
    assert type(consumer) is Consumer
    consumer.callback = callback
    return consumer


def test_a_callback_that_never_suspends_runs_without_a_task():
    seen = []

    async def callback(message):
        seen.append(message)

    async def main():
        consumer = consumer_with(callback)
        before = len(asyncio.all_tasks())
        created = []
        loop = asyncio.get_running_loop()
        loop.set_task_factory(lambda lp, coro: created.append(coro) or asyncio.Task(coro, loop=lp))
        for n in range(3):
            await consumer.deliver(n)
        loop.set_task_factory(None)
        return before, len(asyncio.all_tasks()), created

    before, after, created = asyncio.run(main())
    assert seen == [0, 1, 2]
    assert created == [] and before == after


def test_a_callback_that_suspends_sees_each_outcome_and_ends_before_deliver_returns():
    log = []

    async def callback(message):
        loop = asyncio.get_running_loop()
        first = loop.create_future()
        loop.call_soon(first.set_result, "a")
        log.append(await first)
        await asyncio.sleep(0)  # a bare yield
        failing = loop.create_future()
        loop.call_soon(failing.set_exception, ValueError("b"))
        try:
            await failing
        except ValueError as e:
            log.append(str(e))
        await asyncio.sleep(0.01)
        log.append(message)

    async def main():
        await consumer_with(callback).deliver("c")

    asyncio.run(main())
    assert log == ["a", "b", "c"]


def test_an_exception_of_the_callback_reaches_the_drain_loop():
    async def before_suspending(message):
        raise KeyError(message)

    async def after_suspending(message):
        await asyncio.sleep(0.01)
        raise KeyError(message)

    async def main(callback):
        await consumer_with(callback).deliver("m")

    for callback in (before_suspending, after_suspending):
        with pytest.raises(KeyError, match="m"):
            asyncio.run(main(callback))


@pytest.mark.parametrize("at", ["future", "bare yield"])
def test_a_cancel_of_the_drain_loop_reaches_a_waiting_callback(at):
    """Fetcher.on_stop cancels the drain task; the finishing task is Faust's callback task."""
    cleaned = []

    async def callback(message):
        try:
            if at == "future":
                await asyncio.get_running_loop().create_future()  # never done
            else:
                while True:
                    await asyncio.sleep(0)
        finally:
            cleaned.append(message)

    async def main():
        consumer = consumer_with(callback)
        drain = asyncio.ensure_future(consumer.deliver("m"))
        await asyncio.sleep(0.01)
        assert cleaned == []
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain
        await asyncio.sleep(0.01)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(main()) == []  # wait_first cancelled the callback's task with it
    assert cleaned == ["m"]


def test_a_suspended_flow_ends_the_wait_for_a_waiting_callback():
    """As in Faust: a rebalance suspends the flow, the waiting callback is cancelled and
    the drain loop moves on (the message is read again after the seek to the committed
    offsets)."""
    log = []

    async def callback(message):
        try:
            await asyncio.sleep(0.05)
            log.append(message)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    async def main():
        consumer = consumer_with(callback)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, consumer.suspend_flow.set)
        await consumer.deliver("m")
        log.append("drain loop on")
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert log == ["drain loop on", "cancelled"]  # cancelled, never delivered

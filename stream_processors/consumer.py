"""The worker's Kafka consumer: Faust's aiokafka consumer, less two tasks per message.

Faust's drain loop hands each fetched message to the streams with
``wait_first(callback(message), suspend_flow.wait())``: two asyncio tasks and a wait per
message, ~38 µs of CPU under uvloop (78 under asyncio), about a sixth of what the worker
spends on a one-event message.  The callback (the conductor's) puts the message on its
stream's buffer and nearly always ends without ever suspending.  ``deliver`` runs it in
the drain loop's own task up to its first suspension; only a callback that does suspend (a
full stream buffer, suspended flow, a full producer buffer) is finished in a task of its
own, under the very ``wait_first`` Faust uses.  So a stop or a rebalance meets a waiting
callback exactly as in Faust: the drain loop's wait ends on the suspended flow or the
stopped consumer, and its cancel reaches the loop.

The loop is Faust 0.15.3's ``Consumer._drain_messages`` (faust-streaming is pinned), with
that one call changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver


async def _finish(coro: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    """Drive ``coro``, suspended on ``waiting`` (what it yielded), to its end as a task would.

    A future's outcome is the coroutine's to see as it resumes (``Future.__await__``
    returns or raises it); a cancel of this task that left ``waiting`` undisturbed is
    thrown in, as a task throws it."""
    while True:
        cancel: asyncio.CancelledError | None = None
        try:
            if waiting is None:
                await asyncio.sleep(0)  # a bare yield: resume at the next loop turn
            else:
                waiting._asyncio_future_blocking = False  # taken over, as a task takes it
                await waiting
        except asyncio.CancelledError as exc:
            if waiting is None or not waiting.cancelled():
                cancel = exc
        except BaseException:  # noqa: BLE001, S110  # the coroutine sees it as it resumes
            pass
        try:
            waiting = coro.send(None) if cancel is None else coro.throw(cancel)
        except StopIteration as stop:
            return stop.value


class Consumer(driver.Consumer):
    async def deliver(self, message: Any) -> None:
        """Hand ``message`` to the streams as Faust's drain loop does, without its tasks
        when the callback never suspends."""
        coro = cast(Coroutine[Any, Any, None], self.callback(message))  # the conductor's async def
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        rest = asyncio.ensure_future(_finish(coro, waiting))
        await self.wait_first(rest, self.suspend_flow.wait())

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover  # the loop of every worker test
        getmany = self.getmany
        deliver = self.deliver
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)
                await self.sleep(0)  # getmany may return at once, again and again
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await deliver(message)
                            set_read_offset(tp, offset)
                    unset_flag(flag_consumer_fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

"""The worker's Kafka consumer: Faust's aiokafka consumer, less two tasks per message.

Faust's drain loop hands each fetched message to the streams with
``wait_first(callback(message), suspend_flow.wait())``: two asyncio tasks and a wait per
message, ~38 µs of CPU under uvloop (78 under asyncio), about a sixth of what the worker
spends on a one-event message.  The callback puts the message on its stream's buffer and
nearly always ends without waiting; then ``wait_first`` has delivered it too, suspended
flow or not.  Here it is awaited directly.  One that waits (a full buffer) when a
rebalance stops the flow is cancelled with the fetcher, which Faust stops right after
(``App._stop_consumer``, ``Fetcher.on_stop``), where ``wait_first`` gave up on it: either
way the message is read again, by Faust after its seek to the committed offsets or by
the stage's ``InputGuard``.

The loop is Faust 0.15.3's ``Consumer._drain_messages`` (faust-streaming is pinned), with
that one call changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver


class Consumer(driver.Consumer):
    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover  # the loop of every worker test
        callback = self.callback
        getmany = self.getmany
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
                            await callback(message)
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

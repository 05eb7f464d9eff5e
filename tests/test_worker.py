"""The Faust worker's bars stage on the real broker, checked against the pure core.

The worker runs as the pipeline runs it: ``python -m ticktape.cli process worker`` in a
subprocess, configured by env vars.  The watermark only moves with data, so each test
ends its input with a quote-only tick one hour later in every partition: that closes
every window.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from test_bars import random_ticks, tick

from ticktape import kafka_clients
from ticktape.config import REPO_ROOT
from ticktape.core.bars import BarAggregator
from ticktape.core.indicators import IndicatorState, indicator_event
from ticktape.serde import Serde
from ticktape.stack import free_port

INTERVALS = ["1s", "1m"]
GRACE_MS = 500
PARTITIONS = kafka_clients.topic_spec("md.ticks").partitions
serde = Serde()


class Worker:
    """One ``ticktape process worker`` subprocess."""

    def __init__(self, s, log_path, **env):
        self.metrics_port = free_port()
        self.log_path = log_path
        environ = (
            os.environ
            | {
                "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
                "TOPIC_PREFIX": s.topic_prefix,
                "TICKTAPE_HOME": s.home,
                "METRICS_PORT": str(self.metrics_port),
                "BAR_INTERVALS": ",".join(INTERVALS),
                "BAR_GRACE_MS": str(GRACE_MS),
                "PYTHONPATH": str(REPO_ROOT),
            }
            | env
        )
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ticktape.cli", "process", "worker"],
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )

    def metric(self, name: str, **labels) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}} "):
                return float(line.split()[-1])
        raise KeyError(f"{name}{{{want}}} not in /metrics")

    def figures(self, names=("ticktape_events_in_total", "ticktape_events_out_total", "ticktape_risk_pending")) -> str:
        """The worker's lines of these metrics (for a failure message)."""
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        except OSError as e:
            return f"/metrics: {e}"
        return "\n".join(line for line in text.splitlines() if line.startswith(names))

    def wait_metric(self, name: str, value: float, timeout: float = 30.0, **labels) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.metric(name, **labels) == value:
                    return True
            except (OSError, KeyError):
                pass  # not up yet
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.1)

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def produce(s, items) -> list[tuple[int, int]]:
    """Send (key, value bytes, partition or None) items; (partition, offset) of each."""
    prod = kafka_clients.producer(s)
    placed = [None] * len(items)

    def delivered(i):
        def cb(err, msg):
            assert err is None, err
            placed[i] = (msg.partition(), msg.offset())

        return cb

    for i, (key, value, partition) in enumerate(items):
        extra = {} if partition is None else {"partition": partition}
        prod.produce(s.topic("md.ticks"), value=value, key=key, on_delivery=delivered(i), **extra)
    assert prod.flush(30) == 0
    return placed


def flush_items(ts):
    return [(b"ZFLUSH", serde.encode("tick", tick("ZFLUSH", ts, bid=1.0)), p) for p in range(PARTITIONS)]


def flushed(ticks) -> tuple[list, list]:
    """md.ticks items of ``ticks``, then a flush tick per partition an hour after the last
    (it closes every window), and the records of them all."""
    items = [(t["symbol"].encode(), serde.encode("tick", t), None) for t in ticks]
    items += flush_items(ticks[-1]["ts"] + 3600 * 10**6)
    return items, [dict(t) for t in ticks] + [serde.decode(v)[1] for _, v, _ in items[-PARTITIONS:]]


def expected_output(records, placed):
    """Bars (per topic and partition, in order) and late tick bytes the core computes."""
    per_partition = defaultdict(list)
    for rec, (partition, offset) in zip(records, placed):
        if rec is not None:
            per_partition[partition].append((offset, rec))
    bars, late, late_counts = defaultdict(list), defaultdict(list), defaultdict(int)
    for partition, items in per_partition.items():
        items.sort(key=lambda x: x[0])
        ticks = [rec for _, rec in items]
        out = BarAggregator(INTERVALS, GRACE_MS * 1000).process(ticks)
        for bar in out.bars:
            bars[(f"md.bars.{bar['interval']}", partition)].append(bar)
        for idx, late_for in out.late:
            late[partition].append(serde.encode("tick", ticks[idx]))
            for iv in late_for:
                late_counts[iv] += 1
    return bars, late, late_counts


def expected_indicators(bars) -> dict[tuple[str, str], list[bytes]]:
    """IndicatorSet bytes per (interval, symbol), in bar order, as the core computes them."""
    states, out = {}, defaultdict(list)
    for bar in sorted((b for v in bars.values() for b in v), key=lambda b: b["window_start"]):
        key = (bar["interval"], bar["symbol"])
        st = states.setdefault(key, IndicatorState(bar["interval"]))
        out[key].append(serde.encode("indicator_set", indicator_event(bar, st.update(bar))))
    return out


def read(s, topic: str, count: int, timeout: float = 60.0, quiet: float = 2.0, key=None):
    """Messages of a topic, by partition in order: waits for ``count`` of them (with
    ``key``, of distinct ``key(value)``: a repeat sent at once must not end the wait for a
    lost tail read a few seconds later), then ``quiet`` seconds more so that extra
    (duplicate) messages would show too."""
    partitions = kafka_clients.topic_spec(topic).partitions
    cons = kafka_clients.consumer(s, f"{s.topic_prefix}reader")
    cons.assign([TopicPartition(s.topic(topic), p, OFFSET_BEGINNING) for p in range(partitions)])
    out = defaultdict(list)
    n, seen = 0, set()
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            if n >= count:
                quiet_until = quiet_until or time.monotonic() + quiet
                if time.monotonic() >= quiet_until:
                    break
            msg = cons.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            out[msg.partition()].append(msg)
            if key is None:
                n += 1
            elif key(msg.value()) not in seen:
                seen.add(key(msg.value()))
                n += 1
    finally:
        cons.close()
    return out


def assert_distinct_bars(s, bars: dict, worker: Worker) -> None:
    """The bar topics hold exactly ``bars`` (repeats allowed, with the same bytes)."""
    for interval in INTERVALS:
        want = [b for (t, _), v in bars.items() if t == f"md.bars.{interval}" for b in v]
        got = distinct(s, f"md.bars.{interval}", len(want), lambda v: serde.decode(v)[1]["event_id"])
        assert sorted(map(bytes, got.values())) == sorted(serde.encode("bar", b) for b in want), worker.log_tail()


def decoded(messages):
    return [serde.decode(m.value())[1] for m in messages]


def test_worker_emits_exactly_the_core_bars(settings, tmp_path):
    kafka_clients.ensure_topics(settings)
    ticks = random_ticks(11, 4000)
    ticks[1500]["price"] = math.nan  # an invalid trade: dead-lettered, not merged
    items = [(t["symbol"].encode(), serde.encode("tick", t), None) for t in ticks]
    items.insert(2000, (b"AAPL", b"not avro at all", None))
    records = [dict(t) for t in ticks]
    records.insert(2000, None)
    records[1500] = None
    items += flush_items(ticks[-1]["ts"] + 3600 * 10**6)
    records += [serde.decode(v)[1] for _, v, _ in items[-PARTITIONS:]]
    placed = produce(settings, items)
    bars, late, late_counts = expected_output(records, placed)
    # a message on a bar topic that is no bar: dead-lettered by the indicators stage
    bad_bar = kafka_clients.producer(settings)
    bad_bar.produce(settings.topic("md.bars.1m"), value=b"no bar", key=b"AAPL", partition=0)
    assert bad_bar.flush(10) == 0
    n_bars = sum(map(len, bars.values()))
    assert n_bars > 400 and sum(late_counts.values()) > 20

    worker = Worker(settings, tmp_path / "worker.log")
    try:
        got = {}
        for interval in INTERVALS:
            topic = f"md.bars.{interval}"
            want = sum(len(v) for (t, _), v in bars.items() if t == topic) + (interval == "1m")
            for partition, msgs in read(settings, topic, want).items():
                got[(topic, partition)] = decoded(m for m in msgs if m.value() != b"no bar")
        assert got == dict(bars), worker.log_tail()  # same bars, same order, no extra copy

        late_got = read(settings, "md.ticks.late", sum(map(len, late.values())))
        assert {p: [m.value() for m in msgs] for p, msgs in late_got.items()} == dict(late)

        dlq = [m for msgs in read(settings, "dlq.bars", 2).values() for m in msgs]
        dlq.sort(key=lambda m: m.value() != items[1500][1])  # order depends on partitions
        assert [m.value() for m in dlq] == [items[1500][1], b"not avro at all"]
        headers = [dict(m.headers()) for m in dlq]
        assert headers[0]["ticktape.error"].startswith(b"invalid trade: price=nan")
        assert headers[1]["ticktape.error"] == b"not an Avro event (first bytes 6e6f7420)"
        assert [(int(h["ticktape.source.partition"]), int(h["ticktape.source.offset"])) for h in headers] == [
            placed[1500],
            placed[2000],
        ]
        assert {h["ticktape.source.topic"] for h in headers} == {settings.topic("md.ticks").encode()}

        for interval in INTERVALS:
            assert worker.metric("ticktape_late_ticks_total", interval=interval) == late_counts[interval]
            assert worker.metric("ticktape_bars_closed_total", interval=interval) == sum(
                len(v) for (t, _), v in bars.items() if t == f"md.bars.{interval}"
            )
        assert worker.metric("ticktape_dlq_messages_total", stage="bars", topic="dlq.bars") == 2
        assert worker.wait_metric("ticktape_events_in_total", len(items), stage="bars", topic="md.ticks")

        indicators = expected_indicators(bars)
        got_ind = defaultdict(list)
        for msgs in read(settings, "analytics.indicators", n_bars).values():
            for m in msgs:
                ind = serde.decode(m.value())[1]
                got_ind[(ind["interval"], ind["symbol"])].append(m.value())
        assert got_ind == indicators  # every bar once, in order per symbol and interval
        [bad] = [m for msgs in read(settings, "dlq.indicators", 1).values() for m in msgs]
        assert bad.value() == b"no bar"
        assert dict(bad.headers())["ticktape.error"] == b"not an Avro event (first bytes 6e6f2062)"
        assert sum(serde.decode(v)[1]["sma_200"] is not None for v in indicators[("1s", "AAPL")]) > 0
    finally:
        rc = worker.stop()
    assert rc == 0, worker.log_tail()  # SIGTERM: a graceful stop


def committed(s) -> int:
    """Messages of md.ticks the worker's consumer group has committed."""
    cons = kafka_clients.consumer(s, s.group("worker"))
    try:
        tps = cons.committed([TopicPartition(s.topic("md.ticks"), p) for p in range(PARTITIONS)], timeout=10)
    finally:
        cons.close()
    return sum(max(tp.offset, 0) for tp in tps)


def distinct(s, topic, count, key):
    """The distinct messages of a topic, checking that repeats carry the same bytes."""
    first_copy = {}
    for msgs in read(s, topic, count, quiet=3.0, key=key).values():
        for m in msgs:  # sent just before a kill, sent again after it: same bytes
            assert first_copy.setdefault(key(m.value()), m.value()) == m.value()
    return first_copy


def test_worker_killed_mid_stream_resumes_exactly(settings, tmp_path):
    kafka_clients.ensure_topics(settings)
    ticks = random_ticks(12, 6000)
    # first after the first restart: late only by the watermark saved before it
    ticks[2000] = tick(ticks[1999]["symbol"], ticks[1999]["ts"] - 3 * 10**6, 100.0, 100.0)
    items, records = flushed(ticks)
    # a checkpoint after every batch: once Faust has committed the first part, the state
    # holds it too (with the 1 s default its commits can run ahead of the checkpoint, and
    # the second worker re-reads the first part at once: nothing left to kill it during)
    small_batches = {"PROCESSOR_BATCH_SIZE": "100", "PROCESSOR_BATCH_MS": "20", "PROCESSOR_CHECKPOINT_MS": "0"}

    # 1. all of the first part processed and committed, then killed: its open windows
    #    exist only in the table's changelog
    placed = produce(settings, items[:2000])
    first = Worker(settings, tmp_path / "worker1.log", **small_batches)
    try:
        assert first.wait_metric("ticktape_events_in_total", 2000, stage="bars", topic="md.ticks"), first.log_tail()
        deadline = time.monotonic() + 20
        while committed(settings) < 2000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert committed(settings) == 2000
    finally:
        first.stop(signal.SIGKILL)

    # 2. killed while working: its committed offsets lag behind its saved state
    placed += produce(settings, items[2000:4000])
    second = Worker(settings, tmp_path / "worker2.log", PROCESSOR_BATCH_SIZE="10")  # slow enough to catch
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if second.metric("ticktape_events_in_total", stage="bars", topic="md.ticks") >= 300:
                    break
            except (OSError, KeyError):
                pass  # not up yet
            time.sleep(0.01)
        processed = second.metric("ticktape_events_in_total", stage="bars", topic="md.ticks")
    finally:
        second.stop(signal.SIGKILL)
    assert 300 <= processed < 2000, second.log_tail()

    # 3. the rest, and the output of the three workers is that of one uninterrupted run
    placed += produce(settings, items[4000:])
    bars, late, _ = expected_output(records, placed)
    third = Worker(settings, tmp_path / "worker3.log")
    try:
        assert_distinct_bars(settings, bars, third)
        want_ind = [v for vs in expected_indicators(bars).values() for v in vs]
        got_ind = distinct(settings, "analytics.indicators", len(want_ind), lambda v: serde.decode(v)[1]["event_id"])
        assert sorted(got_ind.values()) == sorted(want_ind)
        want_late = [v for vs in late.values() for v in vs]
        assert sorted(distinct(settings, "md.ticks.late", len(want_late), lambda v: v)) == sorted(want_late)
        # the last worker resumed from the saved state instead of starting over
        assert third.metric("ticktape_bars_closed_total", interval="1s") < sum(
            len(v) for (t, _), v in bars.items() if t == "md.bars.1s"
        )
    finally:
        assert third.stop() == 0, third.log_tail()


def test_a_worker_stopped_while_it_catches_up_stops_at_once_and_resumes_exactly(settings, tmp_path):
    """SIGTERM while the worker works through a backlog of one-tick messages (its stream
    buffers full, its fetcher ahead): it stops within seconds, cleanly, twice; the next
    worker's output is that of one uninterrupted run."""
    kafka_clients.ensure_topics(settings)
    ticks = random_ticks(13, 20000)
    items, records = flushed(ticks)
    placed = produce(settings, items)
    bars, _, _ = expected_output(records, placed)
    for n, at in enumerate((2000, 8000)):
        worker = Worker(settings, tmp_path / f"worker{n}.log")
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and worker.proc.poll() is None:
                try:
                    if worker.metric("ticktape_events_in_total", stage="bars", topic="md.ticks") >= at:
                        break
                except (OSError, KeyError):
                    pass  # not up yet
                time.sleep(0.05)
            assert worker.metric("ticktape_events_in_total", stage="bars", topic="md.ticks") < len(items), (
                "stopped after the backlog, not while catching up"
            )
            started = time.monotonic()
            assert worker.stop(timeout=20) == 0, worker.log_tail()
            assert time.monotonic() - started < 10, worker.log_tail()
        finally:
            if worker.proc.poll() is None:
                worker.stop(signal.SIGKILL)
    last = Worker(settings, tmp_path / "last.log")
    try:
        assert_distinct_bars(settings, bars, last)
    finally:
        assert last.stop() == 0, last.log_tail()


def test_a_worker_killed_before_its_first_checkpoint_is_redone_identically(settings, tmp_path):
    """With no checkpoint yet, Faust has committed the input while the state holds none of
    it: the restarted worker reads it all again from the (empty) state's offsets and sends
    the same bars again, byte for byte; the run's output is that of one uninterrupted run."""
    kafka_clients.ensure_topics(settings)
    ticks = random_ticks(13, 3000)
    items, records = flushed(ticks)

    placed = produce(settings, items[:1500])
    first = Worker(settings, tmp_path / "worker1.log", PROCESSOR_CHECKPOINT_MS="600000")
    try:
        assert first.wait_metric("ticktape_events_in_total", 1500, stage="bars", topic="md.ticks"), first.log_tail()
        sent = first.metric("ticktape_events_out_total", stage="bars", topic="md.bars.1s")
        deadline = time.monotonic() + 20
        while committed(settings) < 1500 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert committed(settings) == 1500  # Faust's commit is past the state's position
    finally:
        first.stop(signal.SIGKILL)
    assert sent > 0

    placed += produce(settings, items[1500:])
    bars, _, _ = expected_output(records, placed)
    second = Worker(settings, tmp_path / "worker2.log")
    try:
        assert_distinct_bars(settings, bars, second)
        # nothing was saved: the second worker folded every tick, the first 1,500 again
        assert second.wait_metric("ticktape_events_in_total", len(items), stage="bars", topic="md.ticks")
        assert "committed past the stage's last checkpoint" in second.log_path.read_text(errors="replace")
    finally:
        assert second.stop() == 0, second.log_tail()


def test_a_worker_killed_before_its_first_checkpoint_with_no_input_after_it_reads_it_again(settings, tmp_path):
    """Faust has committed every input message, the state holds none of it, and nothing
    comes after the restart: no later message shows the hole, so the restarted worker
    watches each assigned partition from the offset saved with the state and folds the
    input again; its bars are those of one uninterrupted run."""
    kafka_clients.ensure_topics(settings)
    ticks = random_ticks(17, 1500)
    items, records = flushed(ticks)

    placed = produce(settings, items)
    first = Worker(settings, tmp_path / "worker1.log", PROCESSOR_CHECKPOINT_MS="600000")
    try:
        assert first.wait_metric("ticktape_events_in_total", len(items), stage="bars", topic="md.ticks"), (
            first.log_tail()
        )
        deadline = time.monotonic() + 20
        while committed(settings) < len(items) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert committed(settings) == len(items)  # Faust's commit is past the state's position
    finally:
        first.stop(signal.SIGKILL)

    bars, _, _ = expected_output(records, placed)
    second = Worker(settings, tmp_path / "worker2.log")
    try:
        assert second.wait_metric("ticktape_events_in_total", len(items), stage="bars", topic="md.ticks"), (
            second.log_tail()
        )
        assert "that the consumer had not delivered" in second.log_path.read_text(errors="replace")
        assert_distinct_bars(settings, bars, second)
    finally:
        assert second.stop() == 0, second.log_tail()


def test_worker_consumer_fetch_wait_comes_from_settings():
    """Faust's driver fixes the fetch wait at 1.5 s; on a broker that answers a waiting
    fetch only when the wait is over, that would be each hop's latency."""
    import asyncio

    from stream_processors.app import build_app
    from ticktape.config import settings as make_settings

    async def fetch_wait(ms: int) -> int:
        app = build_app(make_settings(kafka_bootstrap_servers="127.0.0.1:1", kafka_fetch_max_wait_ms=ms))
        consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(fetch_wait(7)) == 7
    assert asyncio.run(fetch_wait(250)) == 250


def test_worker_producer_linger_comes_from_settings():
    """Faust's default linger of 0 sends a record batch per await; small batches pile up
    and slow the local broker's fetches."""
    from stream_processors.app import build_app
    from ticktape.config import settings as make_settings

    for ms in (0, 12):
        app = build_app(make_settings(kafka_bootstrap_servers="127.0.0.1:1", kafka_linger_ms=ms))
        assert app.producer._settings_default()["linger_ms"] == ms


def test_a_stage_whose_checkpoint_is_due_at_every_tick_still_reads_lost_tails():
    """A tick that checkpoints leaves the lost-tails check to the next tick, but never two
    ticks in a row: with input coming all the time (a checkpoint due at every tick), one
    partition's lost tail would else never be read."""
    import asyncio

    import faust

    from stream_processors.runner import Runner, Stage
    from ticktape.config import settings as make_settings

    class Quiet(Stage):
        name, dlq = "quiet", "dlq.trading"

        def fold(self, msg, event, out) -> None: ...

        async def finish(self, out) -> None: ...

        def forget(self, partitions) -> None: ...

    s = make_settings(kafka_bootstrap_servers="127.0.0.1:1")
    runner = Runner(faust.App("quiet", broker="kafka://127.0.0.1:1"), s, Quiet(s, table=None))
    calls = []

    async def checkpoint() -> None:
        calls.append("checkpoint")
        runner._inputs.clear()

    async def tails() -> None:
        calls.append("tails")

    runner.checkpoint, runner.tails = checkpoint, tails  # type: ignore[method-assign]

    async def ticks() -> None:
        for _ in range(6):
            runner._inputs.add(("in", 0))  # input folded since the last tick
            runner._checkpointed -= s.processor_checkpoint_ms / 1000  # so a checkpoint is due
            await runner.tick()

    asyncio.run(ticks())
    assert calls == ["checkpoint", "checkpoint", "tails"] * 3

"""Bytewax's bars: ticktape's ticks → 1 s and 1 min OHLCV bars with its windowing
operators (``fold_window`` on an event clock, one tumbling windower per interval), on
one worker.  Run by bench/bench_peers.py in the peers' venv; settings in common.py."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main

from common import BROKER, GROUP, INPUT, INTERVALS, OUTPUT_PREFIX, Progress, bar, decode

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
progress = Progress()


def tick_of(msg) -> tuple[str, dict]:
    progress.tick()
    return msg.key.decode(), decode(msg.value)


def event_time(tick: dict) -> datetime:
    return EPOCH + timedelta(microseconds=tick["ts"])


def fold(acc: list | None, tick: dict) -> list | None:
    """[open, high, low, close, volume, trades] of the window's trades."""
    price, size = tick["price"], tick["size"]
    if price is None or size is None:
        return acc  # a quote moves the clock only
    if acc is None:
        return [price, price, price, price, size, 1]
    acc[1], acc[2], acc[3] = max(acc[1], price), min(acc[2], price), price
    acc[4] += size
    acc[5] += 1
    return acc


def merge(a, b):
    return b if a is None else a  # tumbling windows never merge


def flow() -> Dataflow:
    df = Dataflow("bars")
    messages = op.input(
        "ticks", df, KafkaSource([BROKER], [INPUT], add_config={"group.id": GROUP, "fetch.queue.backoff.ms": "10"})
    )
    ticks = op.map("decode", messages, tick_of)
    # Bytewax's watermark also moves with the wall clock after the latest event: a pause of
    # the job longer than the wait (a loaded machine) made ticks late that every other
    # system keeps (5 of 221 bars differed).  The preloaded ticks are in order, so a wait
    # far above any pause gives the core's bars; the flush ticks an hour later close all.
    clock = win.EventClock(event_time, wait_for_system_duration=timedelta(minutes=10))
    for interval, width_ms in INTERVALS.items():
        windows = win.fold_window(
            f"bars-{interval}",
            ticks,
            clock,
            win.TumblingWindower(length=timedelta(milliseconds=width_ms), align_to=EPOCH),
            lambda: None,
            fold,
            merge,
        )
        made = op.filter_map(
            f"bar-{interval}",
            windows.down,
            lambda kv, iv=interval, w=width_ms: (
                None if kv[1][1] is None else KafkaSinkMessage(kv[0].encode(), bar(kv[0], iv, kv[1][0] * w, *kv[1][1]))
            ),
        )
        op.output(f"out-{interval}", made, KafkaSink([BROKER], f"{OUTPUT_PREFIX}md.bars.{interval}"))
    return df


if __name__ == "__main__":
    cli_main(flow(), workers_per_process=1)

"""Quix Streams' bars: ticktape's ticks → 1 s and 1 min OHLCV bars, the way its docs make
them (``tumbling_window(...).agg(...).final()``, one window per interval), closing
windows per partition as ticktape's bars stage does.  Run by bench/bench_peers.py in
the peers' venv; settings in common.py."""

from __future__ import annotations

import tempfile

import quixstreams.dataframe.windows.aggregations as agg
from quixstreams import Application
from quixstreams.models.serializers import Deserializer

from common import BROKER, GRACE_MS, GROUP, INPUT, INTERVALS, OUTPUT_PREFIX, Progress, bar, decode


class Ticks(Deserializer):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def __call__(self, value: bytes, ctx) -> dict:
        self.progress.tick()
        return decode(value)


def main() -> None:
    app = Application(
        broker_address=BROKER,
        consumer_group=GROUP,
        auto_offset_reset="earliest",
        loglevel="WARNING",
        state_dir=tempfile.mkdtemp(prefix="quix-state-"),
        consumer_extra_config={"fetch.queue.backoff.ms": 10},
    )
    ticks = app.topic(
        INPUT,
        key_deserializer="str",
        value_deserializer=Ticks(Progress()),
        timestamp_extractor=lambda value, headers, ts, ts_type: value["ts"] // 1000,
    )
    sdf = app.dataframe(ticks)
    for interval, width_ms in INTERVALS.items():
        out = app.topic(f"{OUTPUT_PREFIX}md.bars.{interval}", key_serializer="str", value_serializer="bytes")
        (
            sdf.tumbling_window(duration_ms=width_ms, grace_ms=GRACE_MS, name=f"bars-{interval}")
            .agg(
                open=agg.Earliest("price"),
                high=agg.Max("price"),
                low=agg.Min("price"),
                close=agg.Latest("price"),
                volume=agg.Sum("size"),
                trades=agg.Count("price"),
            )
            .final(closing_strategy="partition")
            .filter(lambda w: w["trades"] > 0)  # a window of quote-only ticks makes no bar
            .apply(
                lambda w, key, ts, headers, iv=interval: bar(
                    key, iv, w["start"], w["open"], w["high"], w["low"], w["close"], w["volume"], w["trades"]
                ),
                metadata=True,
            )
            .to_topic(out)
        )
    app.run()


if __name__ == "__main__":
    main()

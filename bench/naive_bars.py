"""The baseline of the tick → bar figure: bars the way a Faust tutorial makes them.

One agent takes md.ticks (single Tick messages) event by event, decodes each with the
Avro reader and updates its symbol's OHLCV in a 1-second tumbling windowed table (in
event time, changelog-backed); a closed window's bar goes to md.bars.1s.  It counts
ticks in ``ticktape_events_in_total{stage="naive_bars"}`` on its own /metrics.

    TOPIC_PREFIX=… METRICS_PORT=… python -m bench.naive_bars
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import faust

from ticktape import kafka_clients, metrics
from ticktape.config import settings
from ticktape.serde import Serde

from stream_processors.app import execute


def main() -> int:
    s = settings()
    serde = Serde(s.schema_registry_url)
    partitions = kafka_clients.topic_spec("md.ticks").partitions
    app = faust.App(
        s.group("naive-bars"),
        **kafka_clients.faust_broker_settings(s),
        store="memory://",
        datadir=str(Path(s.home) / "faust-naive"),
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_disable_leader=True,
        broker_session_timeout=s.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
    )
    kafka_clients.faust_fetch_max_wait(app, s.kafka_fetch_max_wait_ms)  # as the worker's
    ticks = app.topic(s.topic("md.ticks"), key_serializer="raw", value_serializer="raw")
    bars = app.topic(s.topic("md.bars.1s"), key_serializer="raw", value_serializer="raw")
    event_time = [0.0]  # seconds: the window of the tick being applied

    def closed(key, value) -> None:
        symbol, (start, _end) = key
        bars.send_soon(
            key=symbol.encode(), value=json.dumps({"symbol": symbol, "start": start, "ohlcv": value}).encode()
        )

    table = (
        app.Table("naive-bars", default=lambda: None, partitions=partitions, on_window_close=closed)
        .tumbling(1.0, expires=timedelta(seconds=5))
        .relative_to(lambda _event: event_time[0])
    )
    counted = metrics.EVENTS_IN.labels("naive_bars", "md.ticks")

    @app.agent(ticks)
    async def aggregate(stream):
        async for value in stream:
            counted.inc()
            _, tick = serde.decode(value)
            price, size = tick["price"], tick["size"]
            if price is None or size is None:
                continue
            event_time[0] = tick["ts"] / 1e6
            bar = table[tick["symbol"]].current()
            if bar is None:
                bar = [price, price, price, price, size]
            else:
                bar = [bar[0], max(bar[1], price), min(bar[2], price), price, bar[4] + size]
            table[tick["symbol"]] = bar

    return execute(app, s)


if __name__ == "__main__":
    sys.exit(main())

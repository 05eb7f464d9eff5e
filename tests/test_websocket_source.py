"""`ticktape produce websocket` against a local server speaking Alpaca's stream protocol
(tests/alpaca_server.py), publishing to the real test broker."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time

import pytest
from alpaca_server import AlpacaServer, bar, quote, rfc3339, trade

from producers.base import DeliveryError, EventPublisher, StopFlag
from producers.websocket import WebSocketFeed
from ticktape import kafka_clients
from ticktape.config import ConfigError
from ticktape.core import alpaca
from ticktape.core.feed import FeedTracker, backoff_delays
from ticktape.serde import Serde

T0 = 1_715_002_200_000_000  # 2024-05-06T13:30:00Z (09:30 in New York) in µs
KEY, SECRET = "test-key", "s3cret-value-never-logged"


# --- the pure core ------------------------------------------------------------------
def test_trade_quote_bar_mapping_exact():
    t = alpaca.tick_from_trade(trade("BRK.B", 42, T0 + 5, 412.5, 300, x="P"))
    assert t == {
        "event_id": "websocket:alpaca:BRK-B:t:2024-05-06:P:42",
        "symbol": "BRK-B",
        "ts": T0 + 5,
        "source": "websocket:alpaca",
        "seq": 0,
        "price": 412.5,
        "size": 300.0,
        "bid": None,
        "ask": None,
        "bid_size": None,
        "ask_size": None,
    }
    q = alpaca.tick_from_quote(quote("AAPL", T0 + 7, 189.1, 189.12, 3, 4))
    assert q["event_id"].startswith(f"websocket:alpaca:AAPL:q:{rfc3339(T0 + 7, 456)}:")
    assert (q["ts"], q["price"], q["bid"], q["ask"], q["bid_size"], q["ask_size"]) == (
        T0 + 7,
        None,
        189.1,
        189.12,
        3.0,
        4.0,
    )
    b = alpaca.bar_from_bar(bar("AAPL", T0, 1.0, 2.0, 0.5, 1.5, 1000, 12, 1.25))
    assert b == {
        "event_id": f"AAPL:1m:{T0}",
        "symbol": "AAPL",
        "interval": "1m",
        "ts": T0 + 60_000_000,
        "window_start": T0,
        "window_end": T0 + 60_000_000,
        "open": 1.0,
        "high": 2.0,
        "low": 0.5,
        "close": 1.5,
        "volume": 1000.0,
        "vwap": 1.25,
        "trade_count": 12,
    }
    assert alpaca.rfc3339_us("2024-05-06T13:30:00.000001999Z") == T0 + 1  # nanoseconds truncate
    with pytest.raises(ValueError):
        alpaca.tick_from_trade({**trade("AAPL", 1, T0, 1.0, 1), "p": "1.0"})


def test_tracker_dedupe_gap_and_seq():
    tr = FeedTracker(depth=3)
    ev = [{"event_id": f"e{i}", "symbol": "A", "ts": i} for i in range(1, 6)]
    assert [tr.tick(dict(e))[0] for e in ev] == [True] * 5
    assert tr.tick(dict(ev[4])) == (False, None)  # remembered
    assert tr.tick(dict(ev[0])) == (False, None)  # older than the memory: not republished
    tr.reconnected()
    e6 = {"event_id": "e6", "symbol": "A", "ts": 6}
    new, gap = tr.tick(e6)
    assert new and gap == ("A", "tick", 5, 6) and e6["seq"] == 6
    tr.reconnected()
    assert tr.tick(dict(e6)) == (False, None)  # overlap first: continuity proven
    assert tr.tick({"event_id": "e7", "symbol": "A", "ts": 7}) == (True, None)
    bars = [{"event_id": f"b{m}", "symbol": "A", "ts": (m + 1) * 60, "window_start": m * 60} for m in (0, 1, 3)]
    assert tr.bar(bars[0]) == (True, None)
    tr.reconnected()
    assert tr.bar(bars[1]) == (True, None)  # the next window: contiguous
    tr.reconnected()
    assert tr.bar(bars[2]) == (True, ("A", "bar", 120, 240))  # minute 2 missing


def test_backoff_grows_to_the_cap_with_jitter():
    delays = backoff_delays(0.5, 4.0, random.Random(1))
    got = [next(delays) for _ in range(8)]
    caps = [0.5, 1, 2, 4, 4, 4, 4, 4]
    assert all(0 <= d <= c for d, c in zip(got, caps))
    assert len(set(got)) == 8


def test_error_classification():
    assert alpaca.error(402, "auth failed").retry is False
    assert alpaca.error(409, "insufficient subscription").retry is False
    assert alpaca.error(406, "connection limit exceeded").retry is True
    assert "ALPACA_API_KEY_ID" in str(alpaca.error(402, "auth failed"))


# --- against the local server and the broker -----------------------------------------
def ws_settings(settings, url, **kw):
    kafka_clients.ensure_topics(settings, ["md.ticks", "md.bars.1m", "dlq.sources"])
    base = dict(
        alpaca_api_key_id=KEY,
        alpaca_api_secret_key=SECRET,
        polygon_api_key=KEY,
        websocket_url=url,
        websocket_ping_interval_s=0.2,
        websocket_timeout_s=0.5,
        websocket_backoff_base_s=0.05,
        websocket_backoff_max_s=0.2,
    )
    return dataclasses.replace(settings, **(base | kw))


def run_feed(s, symbols, count, channels=None, publisher=None, provider=alpaca.PROVIDER) -> WebSocketFeed:
    stop = StopFlag(install_signals=False)
    guard = threading.Timer(60, stop.set)  # never hang the suite
    guard.start()
    feed = WebSocketFeed(s, symbols, channels, stop=stop, count=count, publisher=publisher, provider=provider)
    try:
        feed.run()
    finally:
        guard.cancel()
    assert not stop, "the feed did not reach its count within 60 s"
    return feed


def read_topic(s, topic: str) -> list[dict]:
    """Every event but heartbeats on a topic of this test's prefix, in partition/offset order."""
    from confluent_kafka import TopicPartition

    name = s.topic(topic)
    consumer = kafka_clients.consumer(s, s.group("test-reader"))
    parts = kafka_clients.admin(s).list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, 0) for p in parts])
    serde, out, idle = Serde(), [], 0
    while idle < 4:  # everything was flushed before: stop after ~1 s of silence
        msg = consumer.poll(0.25)
        if msg is None:
            idle += 1
            continue
        idle = 0
        assert msg.error() is None, msg.error()
        event_type, event = serde.decode(msg.value())
        if event_type != "heartbeat":  # the feed's watermark on quiet partitions
            out.append(event)
    consumer.close()
    return out


def trades(symbol, first, n, base_us=T0):
    return [trade(symbol, i, base_us + i * 1000, 100 + i / 100, i % 7 + 1) for i in range(first, first + n)]


def ids(events):
    return sorted(e["event_id"] for e in events)


def test_normal_flow_publishes_exact_events(settings):
    msgs = (
        trades("AAPL", 1, 3)
        + [quote("AAPL", T0 + 3500, 100.01, 100.03)]
        + trades("BRK.B", 1, 2)
        + [bar("AAPL", T0, 100.0, 100.2, 99.9, 100.1, 900, 9, 100.05), trade("MSFT", 1, T0, 1.0, 1)]
    )
    with AlpacaServer(KEY, SECRET, scripts=[[("data", msgs)]], batch=3) as server:
        s = ws_settings(settings, server.url)
        feed = run_feed(s, ["AAPL", "BRK-B"], count=7)
    assert server.subscribes == [
        {"action": "subscribe", "trades": ["AAPL", "BRK.B"], "quotes": ["AAPL", "BRK.B"], "bars": ["AAPL", "BRK.B"]}
    ]
    ticks = read_topic(s, "md.ticks")
    by_symbol = {}
    for t in ticks:
        by_symbol.setdefault(t["symbol"], []).append(t)
    assert [(t["event_id"].split(":", 3)[3], t["seq"], t["price"], t["bid"]) for t in by_symbol["AAPL"]] == [
        ("t:2024-05-06:V:1", 1, 100.01, None),
        ("t:2024-05-06:V:2", 2, 100.02, None),
        ("t:2024-05-06:V:3", 3, 100.03, None),
        (by_symbol["AAPL"][3]["event_id"].split(":", 3)[3], 4, None, 100.01),
    ]
    assert [(t["symbol"], t["seq"], t["ts"], t["size"]) for t in by_symbol["BRK-B"]] == [
        ("BRK-B", 1, T0 + 1000, 2.0),
        ("BRK-B", 2, T0 + 2000, 3.0),
    ]
    assert read_topic(s, "md.bars.1m") == [alpaca.bar_from_bar(msgs[6])]
    st = feed.stats
    assert st.received == {"trade": 5, "quote": 1, "bar": 1}  # MSFT was not subscribed
    assert (st.published, st.duplicates, st.gaps, st.reconnects, st.drops) == (7, 0, 0, 0, 0)


def test_server_closes_mid_stream_no_duplicates_after_reconnect(settings):
    first = trades("AAPL", 1, 100) + trades("MSFT", 1, 50)
    # the second connection replays the last 20 AAPL trades (overlap), MSFT resumes without overlap
    second = trades("AAPL", 81, 70) + trades("MSFT", 61, 40)
    script = [[("data", first), ("close",)], [("data", second)]]
    with AlpacaServer(KEY, SECRET, scripts=script) as server:
        s = ws_settings(settings, server.url)
        feed = run_feed(s, ["AAPL", "MSFT"], count=150 + 50 + 40)
    assert server.connections == 2 and len(server.subscribes) == 2  # resubscribed
    ticks = read_topic(s, "md.ticks")
    assert len(ticks) == 240 and len(set(ids(ticks))) == 240
    aapl = [t for t in ticks if t["symbol"] == "AAPL"]
    assert [t["seq"] for t in aapl] == list(range(1, 151))
    assert [t["event_id"].rsplit(":", 1)[1] for t in aapl] == [str(i) for i in range(1, 151)]
    st = feed.stats
    assert (st.reconnects, st.duplicates, st.gaps, st.published) == (1, 20, 1, 240)  # gap: MSFT 51..60


def test_server_stops_answering_pings(settings):
    script = [[("data", trades("AAPL", 1, 10)), ("deaf", 3)], [("data", trades("AAPL", 11, 10))]]
    with AlpacaServer(KEY, SECRET, scripts=script, max_connections=2) as server:
        s = ws_settings(settings, server.url)
        feed = run_feed(s, ["AAPL"], count=20)
    ticks = read_topic(s, "md.ticks")
    assert [t["seq"] for t in ticks] == list(range(1, 21))
    assert (feed.stats.reconnects, feed.stats.gaps, feed.stats.duplicates) == (1, 1, 0)


def test_malformed_messages_are_dead_lettered_and_unknown_ones_counted(settings, caplog):
    script = [
        [
            ("data", trades("AAPL", 1, 2)),
            ("raw", '[{"T":"t","S":"AAPL",'),  # truncated JSON
            (
                "raw",
                '[{"T":"zz","S":"AAPL"},{"T":"s","S":"AAPL","sc":"H"},{"T":"t","S":"AAPL"},'
                '{"T":"success","msg":"connected"},42]',
            ),
            ("data", trades("AAPL", 3, 2)),
        ]
    ]
    with AlpacaServer(KEY, SECRET, scripts=script) as server:
        s = ws_settings(settings, server.url)
        with caplog.at_level(logging.WARNING):
            feed = run_feed(s, ["AAPL"], count=4)
    assert [t["seq"] for t in read_topic(s, "md.ticks")] == [1, 2, 3, 4]
    assert feed.stats.received == {"trade": 4, "malformed": 3, "unknown": 1, "ignored": 1, "control": 1}
    assert (feed.stats.reconnects, feed.stats.published) == (0, 4)
    assert "unknown message type 'zz'" in caplog.text
    dead = kafka_clients.read_to_end(s, s.topic("dlq.sources"), f"{s.topic_prefix}dlq")
    assert [m.value() for m in dead] == [b'[{"T":"t","S":"AAPL",', b'{"T": "t", "S": "AAPL"}', b"42"]
    assert {dict(m.headers())["ticktape.stage"] for m in dead} == {b"websocket:alpaca"}


def test_burst_of_50000_messages(settings):
    n = 50_000
    msgs = [trade(f"S{i % 50}", i, T0 + i * 20, 10.0 + (i % 100) / 100, 1) for i in range(n)]
    with AlpacaServer(KEY, SECRET, scripts=[[("data", msgs)]], batch=1000) as server:
        # a small queue: Kafka cannot keep up with the burst, the feed must wait, not lose
        s = ws_settings(
            settings, server.url, websocket_queue_size=2000, websocket_ping_interval_s=10, websocket_timeout_s=10
        )
        feed = run_feed(s, [f"S{i}" for i in range(50)], count=n, channels=("trades",))
    ticks = read_topic(s, "md.ticks")
    assert len(ticks) == n and len(set(ids(ticks))) == n
    assert sorted(t["seq"] for t in ticks if t["symbol"] == "S7") == list(range(1, n // 50 + 1))
    st = feed.stats
    assert (st.received, st.published, st.drops, st.duplicates, st.reconnects) == ({"trade": n}, n, 0, 0, 0)


def test_auth_failure_is_one_clear_error_without_retries(settings, caplog):
    with AlpacaServer(KEY, "the-right-secret", scripts=[[("data", trades("AAPL", 1, 5))]]) as server:
        s = ws_settings(settings, server.url)
        stop = StopFlag(install_signals=False)
        feed = WebSocketFeed(s, ["AAPL"], stop=stop, count=5)
        with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as err:
            feed.run()
    assert "402" in str(err.value) and "ALPACA_API_SECRET_KEY" in str(err.value)
    assert server.auth_failures == 1 and server.connections == 1
    assert SECRET not in str(err.value)
    # the library logs frames at DEBUG, truncated in the middle: no piece of the secret shows
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name != "websockets.server")  # not the test server's
    assert "a frame of 76 bytes holding credentials, not shown" in ours
    assert not [SECRET[i : i + 6] for i in range(len(SECRET) - 5) if SECRET[i : i + 6] in ours]
    assert (feed.stats.errors, feed.stats.published) == (1, 0)


def test_missing_keys_fail_before_connecting(settings):
    s = dataclasses.replace(settings, alpaca_api_key_id="", alpaca_api_secret_key="")
    with pytest.raises(ConfigError, match="ALPACA_API_KEY_ID"):
        WebSocketFeed(s, ["AAPL"], stop=StopFlag(install_signals=False))


def test_drop_policy_counts_drops_when_kafka_is_down(settings):
    """Kafka unreachable: the producer takes 1 event, holds the 2nd, the queue holds 50;
    the feed keeps reading and drops (and counts) exactly the rest."""
    from ticktape.stack import free_port

    n, q = 500, 50
    with AlpacaServer(KEY, SECRET, scripts=[[("data", trades("AAPL", 1, n))]]) as server:
        s = ws_settings(settings, server.url, websocket_on_full="drop", websocket_queue_size=q)
        dead = dataclasses.replace(s, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
        pub = EventPublisher(dead, **{"queue.buffering.max.messages": 1, "message.timeout.ms": 10000, "log_level": 0})
        stop = StopFlag(install_signals=False)
        feed = WebSocketFeed(s, ["AAPL"], stop=stop, publisher=pub)
        raised = []

        def run() -> None:
            try:
                feed.run()
            except DeliveryError as e:  # what the dead broker never took
                raised.append(e)

        runner = threading.Thread(target=run)
        runner.start()
        # every trade ends dropped, queued, or with the publisher, which holds 2 in the end
        # (how many it took before the queue filled, 0 to 2, is thread timing)
        deadline = time.monotonic() + 5
        while feed.stats.drops + feed.queue.qsize() != n - 2 and time.monotonic() < deadline:
            stop.wait(0.01)
        drops, queued, accepted = feed.stats.drops, feed.queue.qsize(), feed.accepted
        stop.set()
        while runner.is_alive():  # give up on the dead broker instead of waiting out timeouts
            pub.producer.purge()
            runner.join(0.01)
    assert (accepted, drops + queued) == (n, n - 2)
    assert len(raised) == 1, raised
    assert n - 2 - q <= drops <= n - q
    assert pub.failed == n - drops  # everything not dropped was attempted and reported as failed


def test_an_unreachable_host_is_counted_and_named(settings, caplog):
    from ticktape.stack import free_port

    closed = f"127.0.0.1:{free_port()}"  # nothing listens: every connect is refused
    s = ws_settings(settings, f"ws://{closed}/v2/iex")
    stop = StopFlag(install_signals=False)
    feed = WebSocketFeed(s, ["AAPL"], stop=stop)
    runner = threading.Thread(target=feed.run)
    with caplog.at_level(logging.WARNING, logger="producers.websocket"):
        runner.start()
        deadline = time.monotonic() + 60
        while feed.stats.errors < 3:
            assert time.monotonic() < deadline, "the feed did not retry"
            stop.wait(0.05)
        stop.set()
        runner.join(60)
    assert feed.stats.errors >= 3 and feed.stats.reconnects == 0 and feed.stats.published == 0
    assert f"errors {feed.stats.errors}" in feed.stats.summary()
    assert f"cannot reach {closed} (" in caplog.text
    assert "3 failed connects in a row" in caplog.text


@pytest.mark.parametrize(
    "provider, path, credentials",
    [
        ("alpaca", "/v2/iex", {"alpaca_api_key_id": "test-key", "alpaca_api_secret_key": "test-secret"}),
        ("polygon", "/stocks", {"polygon_api_key": "test-key"}),
    ],
)
def test_the_test_server_runs_on_its_own_and_feeds_the_source(settings, provider, path, credentials):
    import re
    import subprocess
    import sys

    from ticktape.config import REPO_ROOT
    from ticktape.core import polygon

    server = subprocess.Popen(
        [sys.executable, "-m", f"tests.{provider}_server", "--port", "0", "--rate", "200"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first = server.stdout.readline()
        url = re.search(rf"server at (ws://127\.0\.0\.1:\d+{path}) \(", first)
        assert url, first
        env = " ".join(f"{k.upper()}={v}" for k, v in credentials.items())
        assert f"{env} WEBSOCKET_URL={url.group(1)}" in server.stdout.readline()
        assert f"--provider {provider} " in server.stdout.readline()
        s = ws_settings(settings, url.group(1), **credentials)
        provider_spec = {"alpaca": alpaca.PROVIDER, "polygon": polygon.PROVIDER}[provider]
        feed = run_feed(s, ["AAPL", "MSFT"], 20, channels=("trades",), provider=provider_spec)
        assert feed.stats.published == 20 and feed.stats.received["trade"] >= 20
        assert {t["symbol"] for t in read_topic(s, "md.ticks")} == {"AAPL", "MSFT"}
    finally:
        server.terminate()
        server.wait(30)

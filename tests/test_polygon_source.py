"""`ticktape produce websocket --provider polygon` against a local server speaking
Polygon.io's stocks WebSocket protocol (tests/polygon_server.py), publishing to the
real test broker."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from polygon_server import PolygonServer, paggregate, pquote, ptrade, status
from test_websocket_source import KEY, T0, ids, read_topic, run_feed, ws_settings
from websockets.sync.client import connect

from producers.base import StopFlag
from producers.websocket import WebSocketFeed
from ticktape import kafka_clients
from ticktape.config import ConfigError
from ticktape.core import polygon
from ticktape.stack import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
T0_MS = T0 // 1000  # 2024-05-06T13:30:00Z
P = polygon.PROVIDER


def ptrades(symbol, first, n):
    return [ptrade(symbol, i, T0_MS + i, 100 + i / 100, i % 7 + 1) for i in range(first, first + n)]


# --- the pure core ------------------------------------------------------------------
def test_messages_and_mapping_exact():
    assert polygon.auth_message("k") == '{"action": "auth", "params": "k"}'
    assert (
        polygon.subscribe_message(["AAPL", "BRK-B"], ("trades", "quotes"))
        == '{"action": "subscribe", "params": "T.AAPL,T.BRK.B,Q.AAPL,Q.BRK.B"}'
    )
    assert polygon.url("realtime") == "wss://socket.polygon.io/stocks"
    assert polygon.url("delayed") == "wss://delayed.polygon.io/stocks"
    with pytest.raises(ValueError, match="POLYGON_FEED='sip'"):
        polygon.url("sip")
    t = P.parse(ptrade("BRK.B", 42, T0_MS + 5, 412.5, 300, x=10))
    assert (t.kind, t.topic, t.event_type) == ("trade", "md.ticks", "tick")
    assert t.event == {
        "event_id": "websocket:polygon:BRK-B:t:2024-05-06:10:42",
        "symbol": "BRK-B",
        "ts": T0 + 5000,
        "source": "websocket:polygon",
        "seq": 0,
        "price": 412.5,
        "size": 300.0,
        "bid": None,
        "ask": None,
        "bid_size": None,
        "ask_size": None,
    }
    q = P.parse(pquote("AAPL", 77, T0_MS + 7, 189.1, 189.12, 3, 4)).event
    assert (q["event_id"], q["ts"], q["price"], q["bid"], q["ask"], q["bid_size"], q["ask_size"]) == (
        "websocket:polygon:AAPL:q:2024-05-06:77",
        T0 + 7000,
        None,
        189.1,
        189.12,
        3.0,
        4.0,
    )
    b = P.parse(paggregate("AAPL", T0_MS, 1.0, 2.0, 0.5, 1.5, 1000, 100.0, 1.25))
    assert (b.kind, b.topic) == ("bar", "md.bars.1m")
    assert b.event == {
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
        "trade_count": 10,
    }
    assert P.parse(status("success", "subscribed to: T.AAPL")).kind == "control"
    assert P.parse({"ev": "A", "sym": "AAPL"}).kind == "ignored"
    assert P.parse({"ev": "ZZ"}) == ("unknown", None, "", "", "ZZ")
    assert P.parse({**ptrade("AAPL", 1, T0_MS, 1.0, 1), "t": "soon"}).kind == "malformed"
    assert P.parse({**pquote("AAPL", 1, T0_MS, 1.0, 1.1), "q": None}).kind == "malformed"
    assert P.parse(42).kind == "malformed"


def test_status_errors():
    with pytest.raises(Exception, match="POLYGON_API_KEY") as err:
        P.expect([status("auth_failed", "authentication failed")], "authenticated")
    assert err.value.retry is False
    with pytest.raises(Exception) as err:
        P.parse(status("max_connections", "Maximum number of websocket connections exceeded."))
    assert err.value.retry is True and "max_connections" in str(err.value)
    assert (
        P.expect([status("success", "subscribed to: T.A"), status("success", "subscribed to: Q.A")], "subscribed")[
            "message"
        ]
        == "subscribed to: T.A"
    )


# --- against the local server and the broker -----------------------------------------
def test_trades_quotes_and_bars_are_published_exactly(settings):
    msgs = (
        ptrades("AAPL", 1, 3)
        + [pquote("AAPL", 9, T0_MS + 3, 100.01, 100.03), status("success", "x")]
        + ptrades("BRK.B", 1, 2)
        + [paggregate("AAPL", T0_MS, 100.0, 100.2, 99.9, 100.1, 900, 100.0, 100.05), ptrade("MSFT", 1, T0_MS, 1.0, 1)]
    )
    with PolygonServer(KEY, scripts=[[("data", msgs)]], batch=3) as server:
        s = ws_settings(settings, server.url)
        feed = run_feed(s, ["AAPL", "BRK-B"], count=7, provider=P)
    assert server.subscribes == [{"action": "subscribe", "params": "T.AAPL,T.BRK.B,Q.AAPL,Q.BRK.B,AM.AAPL,AM.BRK.B"}]
    ticks = read_topic(s, "md.ticks")
    assert sorted((t["event_id"], t["seq"], t["price"], t["bid"]) for t in ticks) == [
        ("websocket:polygon:AAPL:q:2024-05-06:9", 4, None, 100.01),
        ("websocket:polygon:AAPL:t:2024-05-06:4:1", 1, 100.01, None),
        ("websocket:polygon:AAPL:t:2024-05-06:4:2", 2, 100.02, None),
        ("websocket:polygon:AAPL:t:2024-05-06:4:3", 3, 100.03, None),
        ("websocket:polygon:BRK-B:t:2024-05-06:4:1", 1, 100.01, None),
        ("websocket:polygon:BRK-B:t:2024-05-06:4:2", 2, 100.02, None),
    ]
    assert [b["event_id"] for b in read_topic(s, "md.bars.1m")] == [f"AAPL:1m:{T0}"]
    assert feed.stats.received == {"trade": 5, "quote": 1, "bar": 1, "control": 1}  # MSFT not subscribed
    assert (feed.stats.published, feed.stats.duplicates, feed.stats.reconnects) == (7, 0, 0)


@pytest.mark.slow
def test_cli_publishes_every_trade_once_across_a_reconnect(settings, tmp_path):
    """The real command in its own process: the server drops the connection after 100+50
    trades; the second connection replays the last 20 AAPL trades."""
    first = ptrades("AAPL", 1, 100) + ptrades("MSFT", 1, 50)
    second = ptrades("AAPL", 81, 70) + ptrades("MSFT", 51, 40)
    with PolygonServer(KEY, scripts=[[("data", first), ("close",)], [("data", second)]]) as server:
        s = ws_settings(settings, server.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ALPACA_", "POLYGON_"))}
        env |= {
            "PYTHONPATH": str(REPO_ROOT),
            "TICKTAPE_HOME": str(tmp_path),
            "METRICS_PORT": str(free_port()),
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "TOPIC_PREFIX": s.topic_prefix,
            "POLYGON_API_KEY": KEY,
            "WEBSOCKET_BACKOFF_BASE_S": "0.05",
            "WEBSOCKET_BACKOFF_MAX_S": "0.2",
        }
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "ticktape.cli",
                "produce",
                "websocket",
                "--provider",
                "polygon",
                "--symbols",
                "AAPL,MSFT",
                "--channels",
                "trades",
                "--url",
                server.url,
                "--count",
                "240",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    assert res.returncode == 0, res.stderr[-3000:]
    assert server.connections == 2 and len(server.subscribes) == 2  # resubscribed
    ticks = read_topic(s, "md.ticks")
    assert len(ticks) == 240 and len(set(ids(ticks))) == 240
    aapl = sorted((t for t in ticks if t["symbol"] == "AAPL"), key=lambda t: t["seq"])
    assert [t["seq"] for t in aapl] == list(range(1, 151))
    assert [t["event_id"].rsplit(":", 1)[1] for t in aapl] == [str(i) for i in range(1, 151)]
    # MSFT resumed without an overlap: continuity unproven, one gap reported
    assert "published 240, duplicates 20, gaps 1, reconnects 1" in res.stderr


def test_auth_failure_is_one_clear_error_without_retries(settings, caplog):
    with PolygonServer("the-right-key", scripts=[[("data", ptrades("AAPL", 1, 5))]]) as server:
        s = ws_settings(settings, server.url)
        feed = WebSocketFeed(s, ["AAPL"], stop=StopFlag(install_signals=False), count=5, provider=P)
        with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as err:
            feed.run()
    assert str(err.value) == (
        f"{server.url}: polygon error auth_failed: authentication failed (auth failed: check POLYGON_API_KEY)"
    )
    assert server.auth_failures == 1 and server.connections == 1
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("producers", "ticktape"))]
    assert ours and not any(KEY in m for m in ours) and KEY not in str(err.value)
    assert (feed.stats.errors, feed.stats.published) == (1, 0)


def test_malformed_messages_are_counted_and_dead_lettered(settings, caplog):
    script = [
        [
            ("data", ptrades("AAPL", 1, 2)),
            ("raw", '[{"ev":"T","sym":"AAPL",'),  # truncated JSON
            (
                "raw",
                '[{"ev":"T","sym":"AAPL","x":4,"i":"9","p":"1.0","s":1,"t":1},{"ev":"ZZ"},{"ev":"A","sym":"AAPL"},7]',
            ),
            ("data", ptrades("AAPL", 3, 2)),
        ]
    ]
    with PolygonServer(KEY, scripts=script) as server:
        s = ws_settings(settings, server.url)
        with caplog.at_level(logging.WARNING):
            feed = run_feed(s, ["AAPL"], count=4, provider=P)
    assert [t["seq"] for t in read_topic(s, "md.ticks")] == [1, 2, 3, 4]
    assert feed.stats.received == {"trade": 4, "malformed": 3, "unknown": 1, "ignored": 1}
    assert (
        "malformed message dead-lettered to dlq.sources (trade (ValueError: p is not a number: '1.0'))" in caplog.text
    )
    # what could not be read is kept, as it came, with why
    dead = kafka_clients.read_to_end(s, s.topic("dlq.sources"), f"{s.topic_prefix}dlq")
    assert [m.value() for m in dead] == [
        b'[{"ev":"T","sym":"AAPL",',
        b'{"ev": "T", "sym": "AAPL", "x": 4, "i": "9", "p": "1.0", "s": 1, "t": 1}',
        b"7",
    ]
    headers = [dict(m.headers()) for m in dead]
    assert [h["ticktape.stage"] for h in headers] == [b"websocket:polygon"] * 3
    assert (
        headers[0]["ticktape.error"].startswith(b"not JSON: ")
        and headers[0]["ticktape.source.topic"] == server.url.encode()
    )


def test_missing_key_and_bad_cluster_fail_before_connecting(settings):
    with pytest.raises(ConfigError, match="set POLYGON_API_KEY"):
        WebSocketFeed(
            dataclasses.replace(settings, polygon_api_key=""),
            ["AAPL"],
            stop=StopFlag(install_signals=False),
            provider=P,
        )
    with pytest.raises(ConfigError, match="POLYGON_FEED='sip': use realtime or delayed"):
        WebSocketFeed(
            dataclasses.replace(settings, polygon_api_key="k", polygon_feed="sip"),
            ["AAPL"],
            stop=StopFlag(install_signals=False),
            provider=P,
        )


def test_max_connections_is_retried_until_a_slot_is_free(settings):
    """Another client holds the key's only connection: the feed is told max_connections,
    backs off and retries; once the slot is free it subscribes and publishes everything."""
    with PolygonServer(KEY, scripts=[[], [("data", ptrades("AAPL", 1, 5))]]) as server:
        other = connect(server.url)  # the first connection: authenticated by nobody, but open
        other.recv()  # its "connected" status
        s = ws_settings(settings, server.url)
        stop = StopFlag(install_signals=False)
        feed = WebSocketFeed(s, ["AAPL"], stop=stop, count=5, provider=P)

        def free_the_slot():
            while feed.stats.errors < 2 and not stop.wait(0.02):
                pass
            other.close()

        freer = threading.Thread(target=free_the_slot)
        freer.start()
        guard = threading.Timer(60, stop.set)
        guard.start()
        try:
            feed.run()
        finally:
            guard.cancel()
            freer.join()
    assert not stop, "the feed did not reach its count within 60 s"
    assert feed.stats.errors >= 2 and server.connections == 2  # refused ones are not counted as accepted
    assert [t["seq"] for t in read_topic(s, "md.ticks")] == [1, 2, 3, 4, 5]

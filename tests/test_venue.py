"""The external venue (EXECUTION_VENUE=alpaca-paper) without services: its pure part
(``ticktape.core.venue``), the risk desk's view of a partial fill and the venue's
rejection of the rest, and the real Trading-API client against the local server
(tests/alpaca_trading_server.py).  The worker runs in tests/test_venue_agents.py."""

from __future__ import annotations

import asyncio

import pytest
from alpaca_server import rfc3339
from alpaca_trading_server import TradingServer
from test_trading_desks import LIMITS
from trading_events import MIN, SEC, T0, assert_schema, signal

from ticktape.alpaca_trading import AlpacaTrading, VenueUnavailable
from ticktape.config import settings
from ticktape.core import venue
from ticktape.core.desks import RiskDesk
from ticktape.core.errors import ConfigError

ORDER = {
    "event_id": "ord:sig:paper:AAPL:1704205800000000:0",
    "account": "paper",
    "symbol": "AAPL",
    "ts": T0,
    "side": "BUY",
    "quantity": 100.0,
    "order_type": "MARKET",
    "limit_price": None,
    "reference_price": 185.5,
    "signal_id": "sig:paper:AAPL:1704205800000000:0",
}
CID = venue.client_order_id(ORDER["event_id"])


def venue_order(status, filled, avg=None, **times):
    return {
        "client_order_id": CID,
        "symbol": "AAPL",
        "qty": "100",
        "filled_qty": str(filled),
        "filled_avg_price": None if avg is None else repr(avg),
        "status": status,
        "updated_at": rfc3339(T0),
        **times,
    }


def update(event, filled, avg=None, ts=T0 + SEC, qty=None, price=None):
    data = {"event": event, "order": venue_order(event, filled, avg), "timestamp": rfc3339(ts, 789)}
    if qty is not None:
        data |= {"qty": str(qty), "price": repr(price)}
    return data


def fill(qty, price, ts, event_id):
    return {
        "event_id": event_id,
        "order_id": ORDER["event_id"],
        "account": "paper",
        "symbol": "AAPL",
        "ts": ts,
        "side": "BUY",
        "quantity": qty,
        "price": price,
        "commission": 0.0,
        "slippage_bps": 0.0,
    }


def rejection(qty, ts, code, detail):
    return {
        "event_id": f"rej:{ORDER['event_id']}",
        "account": "paper",
        "symbol": "AAPL",
        "ts": ts,
        "side": "BUY",
        "quantity": qty,
        "reference_price": 185.5,
        "reason_code": code,
        "detail": detail,
        "signal_id": ORDER["signal_id"],
    }


def desk_with_order() -> venue.VenueDesk:
    d = venue.VenueDesk()
    assert d.on_order(dict(ORDER)) is True
    return d


# --- the pure part ----------------------------------------------------------------------


def test_client_order_id_is_a_deterministic_hash_within_48_characters():
    assert CID == "tt-" + __import__("hashlib").sha256(ORDER["event_id"].encode()).hexdigest()[:40]
    assert len(CID) == 43 and venue.client_order_id(ORDER["event_id"]) == CID
    assert venue.client_order_id(ORDER["event_id"] + "x") != CID


def test_order_request_is_the_documented_body():
    assert venue.order_request(ORDER) == {
        "symbol": "AAPL",
        "qty": "100",
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": CID,
    }
    limit = ORDER | {"side": "SELL", "quantity": 2.5, "order_type": "LIMIT", "limit_price": 185.25}
    assert venue.order_request(limit) == {
        "symbol": "AAPL",
        "qty": "2.5",
        "side": "sell",
        "type": "limit",
        "time_in_force": "day",
        "client_order_id": CID,
        "limit_price": "185.25",
    }


def test_a_whole_fill_is_the_internal_desks_fill_and_a_replay_adds_nothing():
    d = desk_with_order()
    assert d.on_order(dict(ORDER)) is False  # a redelivered order: nothing to send
    assert d.on_update(update("new", 0)) == []
    got = d.on_update(update("fill", 100, 185.61, qty=100, price=185.61))
    assert got == [("fill", fill(100.0, 185.61, T0 + SEC, f"fill:{ORDER['event_id']}"))]
    assert_schema("fill", got[0][1])
    assert d.open == {}
    assert d.on_update(update("fill", 100, 185.61, qty=100, price=185.61)) == []


def test_a_partial_fill_then_a_cancel_is_a_fill_and_the_rejection_of_the_rest():
    d = desk_with_order()
    first = d.on_update(update("partial_fill", 40, 185.5, qty=40, price=185.5))
    assert first == [("fill", fill(40.0, 185.5, T0 + SEC, f"fill:{ORDER['event_id']}@40"))]
    assert d.on_update(update("partial_fill", 40, 185.5, qty=40, price=185.5)) == []  # replayed
    # the second partial fill's own qty and price
    second = d.on_update(update("partial_fill", 70, (40 * 185.5 + 30 * 185.7) / 70, T0 + 2 * SEC, 30, 185.7))
    assert second == [("fill", fill(30.0, 185.7, T0 + 2 * SEC, f"fill:{ORDER['event_id']}@70"))]
    closed = d.on_update(update("canceled", 70, (40 * 185.5 + 30 * 185.7) / 70, T0 + 3 * SEC))
    detail = "alpaca canceled the order (70 of 100 filled): canceled"
    assert closed == [("rejection", rejection(30.0, T0 + 3 * SEC, "VENUE_CANCELED", detail))]
    assert_schema("order_rejected", closed[0][1])
    assert d.open == {}


def test_a_snapshot_recovers_the_fills_whose_updates_were_lost():
    d = desk_with_order()
    snap = venue_order("filled", 100, 185.6, filled_at=rfc3339(T0 + 5 * SEC))
    assert d.on_snapshot(snap) == [("fill", fill(100.0, 185.6, T0 + 5 * SEC, f"fill:{ORDER['event_id']}"))]
    d = desk_with_order()
    assert d.on_snapshot(venue_order("new", 0)) == []
    assert d.on_update(update("partial_fill", 40, 185.5, qty=40, price=185.5))[0][1]["quantity"] == 40.0
    # 60 more filled while the stream was away: the average says at what price
    got = d.on_snapshot(venue_order("filled", 100, 185.56, filled_at=rfc3339(T0 + 9 * SEC)))
    assert got == [
        ("fill", fill(60.0, (100 * 185.56 - 40 * 185.5) / 60, T0 + 9 * SEC, f"fill:{ORDER['event_id']}@100"))
    ]


def test_the_venue_rejecting_or_not_answering_rejects_the_whole_order():
    d = desk_with_order()
    got = d.on_update(update("rejected", 0) | {"order": venue_order("rejected", 0, reject_reason="not tradable")})
    detail = "alpaca rejected the order (0 of 100 filled): not tradable"
    assert got == [("rejection", rejection(100.0, T0 + SEC, "VENUE_REJECTED", detail))]
    d = desk_with_order()
    got = d.on_send_failed(ORDER["event_id"], "VENUE_UNANSWERED", "no answer")
    assert got == [("rejection", rejection(100.0, T0 + 1, "VENUE_UNANSWERED", "no answer"))]
    assert d.on_send_failed(ORDER["event_id"], "VENUE_UNANSWERED", "no answer") == []  # once


def test_a_venue_time_before_the_order_is_stamped_just_after_it():
    d = desk_with_order()
    [(_, f)] = d.on_update(update("fill", 100, 185.6, ts=T0 - 5 * SEC, qty=100, price=185.6))
    assert f["ts"] == T0 + 1


def test_the_state_round_trips_per_symbol():
    d = desk_with_order()
    d.on_update(update("partial_fill", 40, 185.5, qty=40, price=185.5))
    state = d.symbol_state("AAPL")
    assert state == {
        "open": [{"order": ORDER, "filled": 40.0, "cost": 40 * 185.5}],
        "last_order_ts": T0,
        "abandoned": [],
    }
    e = venue.VenueDesk()
    e.set_symbol_state("AAPL", state)
    assert e.on_update(update("fill", 100, 185.56, T0 + 2 * SEC, 60, 185.6)) == d.on_update(
        update("fill", 100, 185.56, T0 + 2 * SEC, 60, 185.6)
    )


def test_an_order_rejected_unanswered_is_canceled_if_it_reached_the_venue():
    d = desk_with_order()
    d.on_send_failed(ORDER["event_id"], "VENUE_UNANSWERED", "no answer")
    assert d.abandoned == {CID: "AAPL"} and d.symbol_state("AAPL")["abandoned"] == [CID]
    e = venue.VenueDesk()
    e.set_symbol_state("AAPL", d.symbol_state("AAPL"))
    assert e.abandoned == {CID: "AAPL"}
    assert d.on_abandoned(CID, venue_order("new", 0)) == "cancel" and CID in d.abandoned
    assert d.on_abandoned(CID, venue_order("canceled", 0)) is None and d.abandoned == {}
    assert e.on_abandoned(CID, venue_order("canceled", 40, 185.5)) == "filled" and e.abandoned == {}
    f = desk_with_order()
    f.on_send_failed(ORDER["event_id"], "VENUE_UNANSWERED", "no answer")
    assert f.on_abandoned(CID, None) is None and f.abandoned == {}  # it never got there
    g = desk_with_order()
    g.on_send_failed(ORDER["event_id"], "VENUE_REJECTED", "refused")
    assert g.abandoned == {}  # refused: nothing there to cancel


def test_the_abandoned_orders_are_bounded_oldest_forgotten_first():
    d = venue.VenueDesk()
    ids = [f"ord:{i}" for i in range(venue.ABANDONED_MEMORY + 1)]
    for i, oid in enumerate(ids):
        d.on_order(ORDER | {"event_id": oid, "ts": T0 + i})
        d.on_send_failed(oid, "VENUE_UNANSWERED", "no answer")
    assert list(d.abandoned) == [venue.client_order_id(oid) for oid in ids[1:]]


# --- the risk stage's view ---------------------------------------------------------------


def mark(ts, price):
    return {"event_id": f"mark:paper:AAPL:{ts}", "account": "paper", "symbol": "AAPL", "ts": ts, "price": price}


def test_the_risk_desk_holds_a_partly_filled_order_open_and_takes_its_rest_back():
    desk = RiskDesk("paper", LIMITS.for_account("paper"), 100_000.0, ["AAPL"])
    desk.add("mark", mark(T0, 185.5))
    desk.add("signal", signal("AAPL", T0, 100.0, 185.5))
    desk.on_progress("AAPL", T0)
    [(kind, order)] = [(k, e) for k, e in desk.release() if k == "order"]
    assert (kind, order["side"], order["quantity"]) == ("order", "BUY", 100.0)
    oid = order["event_id"]
    part = fill(40.0, 185.5, T0 + SEC, f"fill:{oid}@40") | {"order_id": oid}
    desk.add("fill", part)
    assert desk.add("fill", part) == []  # a redelivery while buffered
    desk.add("mark", mark(T0 + MIN, 186.0))
    desk.add("signal", signal("AAPL", T0 + MIN, 0.0, 186.0, committed=40.0))
    desk.on_progress("AAPL", T0 + MIN)
    # the order is still open (60 to fill): the fill passes, nothing after its ts
    assert [k for k, _ in desk.release()] == ["fill"]
    assert desk.open_rest == {oid: 60.0}
    assert desk.add("fill", part) == []  # a redelivery after it was processed
    rest = rejection(60.0, T0 + 2 * SEC, "VENUE_CANCELED", "canceled") | {"signal_id": order["signal_id"]}
    desk.add("order_rejected", rest)
    out = desk.release()
    assert [k for k, _ in out] == ["mark", "order"]
    sell = out[1][1]
    # the committed position is what filled (40), so the way back to 0 sells 40, not 100
    assert (sell["side"], sell["quantity"]) == ("SELL", 40.0)
    assert desk.risk.committed == {"AAPL": 0.0} and desk.open_rest == {sell["event_id"]: 40.0}
    assert desk.risk.portfolio.positions["AAPL"].qty == 40.0


def test_a_late_venue_rejection_applies_where_it_arrives_once():
    desk = RiskDesk("paper", LIMITS.for_account("paper"), 100_000.0, ["AAPL"], max_pending=1)
    desk.add("mark", mark(T0, 185.5))
    desk.add("signal", signal("AAPL", T0, 100.0, 185.5))
    desk.on_progress("AAPL", T0)
    [order] = [e for k, e in desk.release() if k == "order"]
    # the buffer's bound forces later events through while the order is open
    desk.add("mark", mark(T0 + MIN, 186.0))
    desk.add("mark", mark(T0 + 2 * MIN, 186.5))
    desk.on_progress("AAPL", T0 + 2 * MIN)
    assert [k for k, _ in desk.release()] == ["mark"] and desk.forced == 1
    rest = rejection(100.0, T0 + 2 * SEC, "VENUE_REJECTED", "refused") | {"signal_id": order["signal_id"]}
    assert desk.add("order_rejected", rest) == []  # late: applied at once, nothing to pass on
    assert desk.risk.committed == {"AAPL": 0.0} and desk.open_orders == {} and desk.open_rest == {}
    assert desk.add("order_rejected", rest) == [] and desk.risk.committed == {"AAPL": 0.0}  # once


# --- the client against the local Trading-API server ----------------------------------------


def client(server, key="test-key", timeout_s=5.0) -> AlpacaTrading:
    return AlpacaTrading(server.url, key, "test-secret", timeout_s)


def run(coro):
    return asyncio.run(coro)


def test_the_client_submits_once_and_finds_a_resent_order():
    with TradingServer(plan=lambda o: [("hold",)]) as server:

        async def go():
            c = client(server)
            try:
                first = await c.submit(venue.order_request(ORDER))
                again = await c.submit(venue.order_request(ORDER))
                known = await c.by_client_id(CID)
                unknown = await c.by_client_id("tt-nothing")
                return first, again, known, unknown, await c.open_orders()
            finally:
                await c.close()

        (ok, order), again, known, unknown, open_orders = run(go())
        assert ok and order["client_order_id"] == CID and order["status"] == "accepted"
        assert again == (False, "HTTP 422: client_order_id must be unique")
        assert known["status"] == "new" and unknown is None
        assert [o["client_order_id"] for o in open_orders] == [CID]
        assert len(server.orders) == 1


def test_the_client_cancels_an_open_order_once():
    with TradingServer(plan=lambda o: [("hold",)]) as server:

        async def go():
            c = client(server)
            try:
                _, order = await c.submit(venue.order_request(ORDER))
                return await c.cancel(order["id"]), await c.cancel(order["id"]), await c.cancel("nothing")
            finally:
                await c.close()

        assert run(go()) == (True, False, False)
        assert server.orders[CID]["status"] == "canceled"
        assert [u["event"] for u in server.updates] == ["new", "canceled"]


def test_the_client_reports_a_refusal_and_an_unavailable_venue():
    with TradingServer(plan=lambda o: [("refuse", 403, "insufficient buying power")]) as server:

        async def go():
            c = client(server)
            try:
                refused = await c.submit(venue.order_request(ORDER))
                server.down = True
                with pytest.raises(VenueUnavailable, match="HTTP 503"):
                    await c.submit(venue.order_request(ORDER))
                return refused
            finally:
                await c.close()

        assert run(go()) == (False, "HTTP 403: insufficient buying power")


def test_the_venue_needs_credentials_and_an_http_url():
    with pytest.raises(
        ConfigError, match="^EXECUTION_VENUE=alpaca-paper needs ALPACA_API_KEY_ID and ALPACA_API_SECRET_KEY set$"
    ):
        settings(execution_venue="alpaca-paper", alpaca_api_key_id="", alpaca_api_secret_key="")
    with pytest.raises(ConfigError, match="^ALPACA_TRADING_URL='ftp://x': must be an http\\(s\\):// URL$"):
        settings(
            execution_venue="alpaca-paper",
            alpaca_api_key_id="k",
            alpaca_api_secret_key="s",
            alpaca_trading_url="ftp://x",
        )
    c = AlpacaTrading.from_settings(
        settings(
            execution_venue="alpaca-paper",
            alpaca_api_key_id="k",
            alpaca_api_secret_key="s",
            alpaca_trading_url="http://127.0.0.1:9/",
        )
    )
    assert (c.base, c.stream_url) == ("http://127.0.0.1:9", "ws://127.0.0.1:9/stream")
    assert (
        AlpacaTrading("https://paper-api.alpaca.markets", "k", "s", 1).stream_url
        == "wss://paper-api.alpaca.markets/stream"
    )


def test_the_stream_delivers_trade_updates_and_reconnects():
    steps = [("fill", 40, 185.5, T0 + SEC), ("hold",)]
    with TradingServer(plan=lambda o: steps) as server:
        got: list[dict] = []
        connected: list[int] = []

        async def go():
            c = client(server)

            async def on_update(data):
                got.append(data)

            async def on_connected():
                connected.append(len(connected))

            task = asyncio.create_task(c.trade_updates(on_update, on_connected))
            try:
                await until(lambda: server.listening == 1)
                await c.submit(venue.order_request(ORDER))
                await until(lambda: len(got) == 2)
                await asyncio.to_thread(server.drop_streams)
                await until(lambda: len(connected) == 2 and server.listening == 1)
                await asyncio.to_thread(server.run, CID, [("fill", 60, 185.6, T0 + 2 * SEC)])
                await until(lambda: len(got) == 3)
            finally:
                task.cancel()
                await c.close()

        run(go())
        assert [(u["event"], u["order"]["filled_qty"]) for u in got] == [
            ("new", "0"),
            ("partial_fill", "40"),
            ("fill", "100"),
        ]
        d = desk_with_order()
        fills = [e for u in got for _, e in d.on_update(u)]
        assert [(f["quantity"], f["price"]) for f in fills] == [(40.0, 185.5), (60.0, 185.6)]


def test_the_stream_refuses_wrong_credentials():
    with TradingServer() as server:

        async def go():
            c = client(server, key="wrong")

            async def nothing(*_):
                return None

            try:
                await asyncio.wait_for(c.trade_updates(nothing, nothing), 60)
            finally:
                await c.close()

        with pytest.raises(ConfigError, match="Alpaca refused ALPACA_API_KEY_ID / ALPACA_API_SECRET_KEY"):
            run(go())
        assert server.auth_failures == 1


async def until(condition, timeout=60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)

"""A local server speaking Alpaca's Trading API as documented, for the orders of
EXECUTION_VENUE=alpaca-paper: REST (``POST /v2/orders``, ``GET /v2/orders?status=open``,
``GET /v2/orders:by_client_order_id``; the APCA-API-* headers, 401 without them, 422 for
a client order id already used) and the ``trade_updates`` stream at ``/stream``
(authenticate, listen, then binary frames as Alpaca's paper stream sends them).  An
update sent while no client listens is lost, as on the real stream.

What happens to an order is ``plan(order)``'s list of steps, run when it arrives:

    ("fill", qty, price, ts_us)   a fill of qty (partial_fill until the order is whole)
    ("cancel", ts_us) / ("expire", ts_us) / ("reject", ts_us, reason)
    ("refuse", http_status, message)   answer the POST with that error instead (first step only)
    ("hold",)                      stop here: the order stays open (``run`` goes on later)
    ("stall",)                     keep the POST's answer until ``release()`` (first step only)

``DELETE /v2/orders/<id>`` cancels an open order (204; 422 once it ended).  ``down =
True`` answers every request with HTTP 503.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable

from aiohttp import WSMsgType, web
from alpaca_server import rfc3339

OPEN = ("new", "accepted", "partially_filled", "pending_new")
STATUS = {"cancel": "canceled", "expire": "expired", "reject": "rejected"}
EVENT = {"cancel": "canceled", "expire": "expired", "reject": "rejected"}
TIME_FIELD = {"cancel": "canceled_at", "expire": "expired_at", "reject": "failed_at"}


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


class TradingServer:
    def __init__(self, key: str = "test-key", secret: str = "test-secret", plan: Callable[[dict], list] | None = None):
        self.key, self.secret = key, secret
        self.plan = plan or (lambda order: [])
        self.orders: dict[str, dict] = {}  # client order id -> the order object
        self.steps: dict[str, list] = {}  # client order id -> steps still to run
        self.posts: list[dict] = []  # every POST /v2/orders body, duplicates included
        self.updates: list[dict] = []  # every trade update sent (or lost)
        self.down = False
        self.auth_failures = 0
        self._clients: set = set()
        self._released: asyncio.Event | None = None
        self._n = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> "TradingServer":
        self._thread.start()
        app = web.Application()
        app.router.add_post("/v2/orders", self._post)
        app.router.add_get("/v2/orders", self._list)
        app.router.add_get("/v2/orders:by_client_order_id", self._by_client_id)
        app.router.add_delete("/v2/orders/{order_id}", self._cancel)
        app.router.add_get("/stream", self._stream)

        async def start():
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        port = self.call(start())
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            for ws in list(self._clients):
                await ws.close()
            assert self._runner is not None
            await self._runner.cleanup()

        self.call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def call(self, coro):
        """Run a coroutine on the server's loop (from the test's thread) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def run(self, client_id: str, steps: list) -> None:
        """Go on with an order (e.g. fill one that was held)."""

        async def go():
            self.steps[client_id] = list(steps)
            await self._advance(client_id)

        self.call(go())

    def release(self) -> None:
        """Answer the stalled POSTs (their clients may be gone)."""

        async def go():
            self._released = self._released or asyncio.Event()
            self._released.set()

        self.call(go())

    def drop_streams(self) -> None:
        """Close every stream connection (the client must reconnect)."""

        async def drop():
            for ws in list(self._clients):
                await ws.close()

        self.call(drop())

    @property
    def listening(self) -> int:
        return len(self._clients)

    # -- REST --------------------------------------------------------------------------
    def _refused(self, request) -> web.Response | None:
        if self.down:
            return web.json_response({"message": "service unavailable"}, status=503)
        headers = request.headers
        if headers.get("APCA-API-KEY-ID") != self.key or headers.get("APCA-API-SECRET-KEY") != self.secret:
            return web.json_response({"code": 40110000, "message": "request is not authorized"}, status=401)
        return None

    async def _post(self, request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        body = await request.json()
        self.posts.append(body)
        missing = [k for k in ("symbol", "qty", "side", "type", "time_in_force") if k not in body]
        if missing:
            return web.json_response({"code": 40010000, "message": f"{missing[0]} is required"}, status=422)
        cid = body.get("client_order_id") or str(uuid.uuid4())
        if len(cid) > 48:
            return web.json_response({"code": 40010000, "message": "client_order_id is too long"}, status=422)
        if cid in self.orders:
            return web.json_response({"code": 40010001, "message": "client_order_id must be unique"}, status=422)
        self._n += 1
        order = {
            "id": f"00000000-0000-4000-8000-{self._n:012d}",
            "client_order_id": cid,
            "created_at": rfc3339(0),
            "updated_at": rfc3339(0),
            "submitted_at": rfc3339(0),
            "filled_at": None,
            "expired_at": None,
            "canceled_at": None,
            "failed_at": None,
            "asset_class": "us_equity",
            "symbol": body["symbol"],
            "qty": body["qty"],
            "filled_qty": "0",
            "filled_avg_price": None,
            "order_type": body["type"],
            "type": body["type"],
            "side": body["side"],
            "time_in_force": body["time_in_force"],
            "limit_price": body.get("limit_price"),
            "status": "accepted",
            "extended_hours": False,
        }
        steps = list(self.plan(dict(order)))
        if steps and steps[0][0] == "refuse":
            _, status, message = steps[0]
            return web.json_response({"code": status * 100000, "message": message}, status=status)
        self.orders[cid] = order
        self.steps[cid] = steps
        answer = dict(order)
        order["status"] = "new"
        await self._send("new", order, None)
        if steps and steps[0][0] == "stall":
            steps.pop(0)
            self._released = self._released or asyncio.Event()
            await self._released.wait()
        asyncio.get_running_loop().create_task(self._advance(cid))  # the rest after the answer
        return web.json_response(answer)

    async def _list(self, request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        if request.query.get("status", "open") != "open":
            return web.json_response({"message": "only status=open here"}, status=422)
        return web.json_response([o for o in self.orders.values() if o["status"] in OPEN])

    async def _by_client_id(self, request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        cid = request.query.get("client_order_id", "")
        order = self.orders.get(cid)
        if order is None:
            return web.json_response({"code": 40410000, "message": f"order not found for {cid}"}, status=404)
        return web.json_response(order)

    async def _cancel(self, request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        oid = request.match_info["order_id"]
        order = next((o for o in self.orders.values() if o["id"] == oid), None)
        if order is None:
            return web.json_response({"code": 40410000, "message": "order not found"}, status=404)
        if order["status"] not in OPEN:
            return web.json_response({"code": 42210000, "message": "order is not cancelable"}, status=422)
        self.steps[order["client_order_id"]] = [("cancel", 0)]
        await self._advance(order["client_order_id"])
        return web.Response(status=204)

    # -- the order's life --------------------------------------------------------------
    async def _advance(self, cid: str) -> None:
        order, steps = self.orders[cid], self.steps[cid]
        while steps:
            step = steps.pop(0)
            kind = step[0]
            if kind == "hold":
                return
            if kind == "fill":
                _, qty, price, ts = step
                filled = float(order["filled_qty"])
                avg = float(order["filled_avg_price"] or 0)
                cum = filled + qty
                order["filled_qty"] = _num(cum)
                order["filled_avg_price"] = repr(price if filled == 0 else (filled * avg + qty * price) / cum)
                whole = cum >= float(order["qty"])
                order["status"] = "filled" if whole else "partially_filled"
                order["updated_at"] = rfc3339(ts)
                if whole:
                    order["filled_at"] = rfc3339(ts)
                await self._send("fill" if whole else "partial_fill", order, ts, qty=_num(qty), price=repr(price))
            else:
                ts = step[1]
                order["status"] = STATUS[kind]
                order["updated_at"] = order[TIME_FIELD[kind]] = rfc3339(ts)
                await self._send(EVENT[kind], order, ts)

    async def _send(self, event: str, order: dict, ts: int | None, **extra) -> None:
        data = {"event": event, "order": dict(order), **extra}
        if ts is not None:
            data["timestamp"] = rfc3339(ts, 789)
        if event in ("fill", "partial_fill"):
            data["execution_id"] = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{order['id']}:{order['filled_qty']}"))
        self.updates.append(data)
        frame = json.dumps({"stream": "trade_updates", "data": data}).encode()
        for ws in list(self._clients):
            await ws.send_bytes(frame)

    # -- the stream --------------------------------------------------------------------
    async def _stream(self, request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        authorized = False
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            m = json.loads(msg.data)
            action, data = m.get("action"), m.get("data", {})
            if action == "authenticate":
                authorized = data.get("key_id") == self.key and data.get("secret_key") == self.secret
                status = "authorized" if authorized else "unauthorized"
                reply = {"stream": "authorization", "data": {"action": "authenticate", "status": status}}
                await ws.send_bytes(json.dumps(reply).encode())
                if not authorized:
                    self.auth_failures += 1
                    await ws.close()
            elif action == "listen" and authorized:
                streams = [s for s in data.get("streams", []) if s == "trade_updates"]
                await ws.send_bytes(json.dumps({"stream": "listening", "data": {"streams": streams}}).encode())
                (self._clients.add if streams else self._clients.discard)(ws)
            else:
                error = {"stream": "authorization", "data": {"action": action, "status": "unauthorized"}}
                await ws.send_bytes(json.dumps(error).encode())
        self._clients.discard(ws)
        return ws

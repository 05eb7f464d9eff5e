"""Alpaca's Trading API, the I/O only (``ticktape.core.venue`` is the pure part): orders
by REST (``POST /v2/orders``, ``GET /v2/orders?status=open``, ``GET
/v2/orders:by_client_order_id``) and the ``trade_updates`` stream (``<base>/stream``:
authenticate, listen, then one message per order update; Alpaca's paper stream sends
binary frames).  Credentials come from the settings (env) as the APCA-API-* headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from ticktape.config import Settings
from ticktape.core.errors import ConfigError

log = logging.getLogger(__name__)
RECONNECT_S = (0.5, 1, 2, 5)  # waits before the stream's reconnects, the last one repeated
HEARTBEAT_S = 20  # a ping unanswered this long: the stream is dead, reconnect


class VenueUnavailable(RuntimeError):
    """No answer: a connection error, a timeout, HTTP 429 or 5xx (worth retrying)."""


class AlpacaTrading:
    def __init__(self, base_url: str, key_id: str, secret_key: str, timeout_s: float):
        self.base = base_url.rstrip("/")
        self.stream_url = "ws" + self.base[len("http") :] + "/stream"  # https → wss, http → ws
        self.key_id, self.secret_key = key_id, secret_key
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> "AlpacaTrading":
        """The settings checked EXECUTION_VENUE's credentials and URL."""
        return cls(s.alpaca_trading_url, s.alpaca_api_key_id, s.alpaca_api_secret_key, s.venue_timeout_s)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"APCA-API-KEY-ID": self.key_id, "APCA-API-SECRET-KEY": self.secret_key}
            self._session = aiohttp.ClientSession(headers=headers, timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, **kw) -> tuple[int, object]:
        """(HTTP status, parsed JSON body or text); VenueUnavailable when there is no answer."""
        try:
            async with self.session().request(method, self.base + path, **kw) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise VenueUnavailable(f"{method} {path}: {type(e).__name__} {e}") from e
        if resp.status == 429 or resp.status >= 500:
            raise VenueUnavailable(f"{method} {path}: HTTP {resp.status} {text[:200]}")
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text

    async def submit(self, body: dict) -> tuple[bool, object]:
        """(True, the order) when accepted, (False, the refusal's message) when refused."""
        status, payload = await self._call("POST", "/v2/orders", json=body)
        if status in (200, 201):
            return True, payload
        message = payload.get("message", payload) if isinstance(payload, dict) else payload
        return False, f"HTTP {status}: {message}"

    async def by_client_id(self, client_id: str) -> dict | None:
        status, payload = await self._call(
            "GET", "/v2/orders:by_client_order_id", params={"client_order_id": client_id}
        )
        if status == 404:
            return None
        if status != 200 or not isinstance(payload, dict):
            raise VenueUnavailable(f"GET order {client_id}: HTTP {status} {str(payload)[:200]}")
        return payload

    async def cancel(self, order_id: str) -> bool:
        """``DELETE /v2/orders/<id>``; False when the order is unknown or no longer cancelable."""
        status, _ = await self._call("DELETE", f"/v2/orders/{order_id}")
        return status in (200, 204)

    async def open_orders(self) -> list[dict]:
        status, payload = await self._call("GET", "/v2/orders", params={"status": "open", "limit": "500"})
        if status != 200 or not isinstance(payload, list):
            raise VenueUnavailable(f"GET open orders: HTTP {status} {str(payload)[:200]}")
        return payload

    async def trade_updates(
        self, on_update: Callable[[dict], Awaitable[None]], on_connected: Callable[[], Awaitable[None]]
    ) -> None:
        """Follow the stream for ever: ``on_update(data)`` per trade update, ``on_connected()``
        after each (re)connection (updates sent while away are only in the orders' state).
        Refused credentials raise ConfigError; a lost connection is reopened."""
        attempt = 0
        while True:
            try:
                async with self.session().ws_connect(
                    self.stream_url, heartbeat=HEARTBEAT_S, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                ) as ws:
                    await self._listen(ws)
                    attempt = 0
                    await on_connected()
                    async for msg in ws:
                        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            break
                        m = _message(msg.data)
                        if m.get("stream") == "trade_updates":
                            await on_update(m["data"])
            except ConfigError:
                raise  # refused credentials: no reconnect mends them
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as e:
                log.warning("alpaca trade_updates: %s; reconnecting", e)
            wait = RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)]
            attempt += 1
            await asyncio.sleep(wait)

    async def _listen(self, ws) -> None:
        await ws.send_json({"action": "authenticate", "data": {"key_id": self.key_id, "secret_key": self.secret_key}})
        m = _message((await ws.receive(timeout=10)).data)
        if m.get("stream") != "authorization" or m.get("data", {}).get("status") != "authorized":
            raise ConfigError(
                f"Alpaca refused ALPACA_API_KEY_ID / ALPACA_API_SECRET_KEY at {self.stream_url}: {str(m)[:200]}"
            )
        await ws.send_json({"action": "listen", "data": {"streams": ["trade_updates"]}})
        m = _message((await ws.receive(timeout=10)).data)
        if "trade_updates" not in m.get("data", {}).get("streams", ()):
            raise ValueError(f"the stream did not listen to trade_updates: {str(m)[:200]}")


def _message(data) -> dict:
    """A stream message (a text or binary frame of JSON)."""
    if not isinstance(data, (str, bytes)):
        raise ValueError(f"the stream closed or sent no message: {data!r}")
    m = json.loads(data)
    if not isinstance(m, dict):
        raise ValueError(f"a stream message that is no object: {str(m)[:200]}")
    return m

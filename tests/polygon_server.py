"""A local WebSocket server speaking Polygon.io's stocks WebSocket as documented: the
``connected`` status, auth by message (``auth_success``; ``auth_failed``, then the
server closes), a ``success`` status per subscribed ``<ev>.<ticker>`` (``<ev>.*`` for
all), ``max_connections`` when the key's connections are used up, events batched into
arrays and filtered by the subscription.  Scripts: tests/ws_server.py.

Runnable, to try `ticktape produce websocket --provider polygon` offline (it prints the
command line):

    python -m tests.polygon_server [--port 8765] [--rate 20] [--seed 1]
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

if __package__:  # run as `python -m tests.polygon_server`: its siblings are top-level modules in the tests
    sys.path.insert(0, str(Path(__file__).parent))
import ws_server  # noqa: E402
from ws_server import AUTH_TIMEOUT_S, ScriptedServer  # noqa: E402


def status(name: str, message: str) -> dict:
    return {"ev": "status", "status": name, "message": message}


def ptrade(symbol: str, i: int, ms: int, price: float, size: int, x: int = 4) -> dict:
    return {
        "ev": "T",
        "sym": symbol,
        "x": x,
        "i": str(i),
        "z": 3,
        "p": price,
        "s": size,
        "c": [12, 37],
        "t": ms,
        "q": 1000 + i,
    }


def pquote(symbol: str, q: int, ms: int, bid: float, ask: float, bid_size: int = 1, ask_size: int = 2) -> dict:
    return {
        "ev": "Q",
        "sym": symbol,
        "bx": 11,
        "bp": bid,
        "bs": bid_size,
        "ax": 12,
        "ap": ask,
        "as": ask_size,
        "c": 1,
        "i": [604],
        "t": ms,
        "q": q,
        "z": 3,
    }


def paggregate(
    symbol: str, start_ms: int, o: float, h: float, low: float, c: float, v: int, avg_size: float, vw: float
) -> dict:
    return {
        "ev": "AM",
        "sym": symbol,
        "v": v,
        "av": v * 10,
        "op": o,
        "vw": vw,
        "o": o,
        "c": c,
        "h": h,
        "l": low,
        "a": vw,
        "z": avg_size,
        "s": start_ms,
        "e": start_ms + 60_000,
    }


class PolygonServer(ScriptedServer):
    path = "/stocks"

    def __init__(self, key: str = "test-key", **kw):
        super().__init__(**kw)
        self.key = key

    def limit_reached(self) -> list:
        return [status("max_connections", "Maximum number of websocket connections exceeded.")]

    async def welcome(self, ws) -> None:
        await self.send(ws, [status("connected", "Connected Successfully")])

    async def authenticate(self, ws) -> bool:
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT_S)
            except TimeoutError:
                await ws.close()
                return False
            try:
                msg = json.loads(raw)
            except ValueError:
                await self.send(ws, [status("error", "invalid JSON")])
                continue
            if not isinstance(msg, dict) or msg.get("action") != "auth":
                await self.send(ws, [status("error", "not authorized")])
                continue
            if msg.get("params") != self.key:
                self.auth_failures += 1
                await self.send(ws, [status("auth_failed", "authentication failed")])
                await ws.close()
                return False
            await self.send(ws, [status("auth_success", "authenticated")])
            return True

    async def request(self, ws, msg, subs: dict) -> bool:
        action = msg.get("action") if isinstance(msg, dict) else None
        params = msg.get("params") if isinstance(msg, dict) else None
        if action not in ("subscribe", "unsubscribe") or not isinstance(params, str):
            await self.send(ws, [status("error", "invalid request")])
            return False
        self.subscribes.append(msg)
        topics = [p.strip() for p in params.split(",") if p.strip()]
        for t in topics:
            (
                subs.setdefault("topics", set()).add
                if action == "subscribe"
                else subs.setdefault("topics", set()).discard
            )(t)
        verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
        await self.send(ws, [status("success", f"{verb}: {t}") for t in topics])
        return action == "subscribe"

    def wanted(self, m: dict, subs: dict) -> bool:
        if m.get("ev") == "status":
            return True
        topics = subs.get("topics", set())
        return f"{m['ev']}.{m['sym']}" in topics or f"{m['ev']}.*" in topics

    def traded(self, subs: dict) -> list[str]:
        return sorted(t[2:] for t in subs.get("topics", ()) if t.startswith("T.") and t != "T.*")

    def live_trade(self, symbol: str, i: int, us: int, price: float, size: int) -> dict:
        return ptrade(symbol, i, us // 1000, price, size)


def main(argv: list[str] | None = None) -> None:
    ws_server.main(
        argv,
        "polygon",
        lambda port, rate, seed: PolygonServer(max_connections=4, port=port, default_script=[("live", rate, seed)]),
        "POLYGON_API_KEY=test-key",
    )


if __name__ == "__main__":
    main()

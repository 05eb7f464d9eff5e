"""A local WebSocket server speaking Alpaca's market-data stream v2 as documented: the
welcome message, authentication by message (success, 402 auth failed, 401 before
auth, 404 auth timeout), subscription acknowledgements (trades also subscribe their
corrections and cancel errors), 406 connection limit, data points batched into arrays
and filtered by the subscription.  Scripts: tests/ws_server.py.

Runnable, to try `ticktape produce websocket` offline (it prints the command line):

    python -m tests.alpaca_server [--port 8765] [--rate 20] [--seed 1]
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

if __package__:  # run as `python -m tests.alpaca_server`: its siblings are top-level modules in the tests
    sys.path.insert(0, str(Path(__file__).parent))
import ws_server  # noqa: E402
from ws_server import AUTH_TIMEOUT_S, ScriptedServer  # noqa: E402

CHANNEL_OF = {"t": "trades", "q": "quotes", "b": "bars"}


def rfc3339(us: int, nanos: int = 0) -> str:
    """µs since the epoch (+ extra nanoseconds) → RFC-3339 with nanoseconds, as Alpaca sends."""
    dt = datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 1_000_000:06d}{nanos:03d}Z"


def trade(symbol: str, i: int, us: int, price: float, size: int, x: str = "V") -> dict:
    return {"T": "t", "S": symbol, "i": i, "x": x, "p": price, "s": size, "t": rfc3339(us, 123), "c": ["@"], "z": "C"}


def quote(symbol: str, us: int, bid: float, ask: float, bid_size: int = 1, ask_size: int = 2) -> dict:
    return {
        "T": "q",
        "S": symbol,
        "bx": "V",
        "bp": bid,
        "bs": bid_size,
        "ax": "V",
        "ap": ask,
        "as": ask_size,
        "t": rfc3339(us, 456),
        "c": ["R"],
        "z": "C",
    }


def bar(symbol: str, start_us: int, o: float, h: float, low: float, c: float, v: int, n: int, vw: float) -> dict:
    return {
        "T": "b",
        "S": symbol,
        "o": o,
        "h": h,
        "l": low,
        "c": c,
        "v": v,
        "t": rfc3339(start_us)[:19] + "Z",
        "n": n,
        "vw": vw,
    }


class AlpacaServer(ScriptedServer):
    path = "/v2/iex"

    def __init__(self, key: str = "test-key", secret: str = "test-secret", **kw):
        super().__init__(**kw)
        self.key, self.secret = key, secret

    def limit_reached(self) -> list:
        return [{"T": "error", "code": 406, "msg": "connection limit exceeded"}]

    async def welcome(self, ws) -> None:
        await self.send(ws, [{"T": "success", "msg": "connected"}])

    async def authenticate(self, ws) -> bool:
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT_S)
            except TimeoutError:
                await self.send(ws, [{"T": "error", "code": 404, "msg": "auth timeout"}])
                await ws.close()
                return False
            try:
                msg = json.loads(raw)
            except ValueError:
                await self.send(ws, [{"T": "error", "code": 400, "msg": "invalid syntax"}])
                continue
            if msg.get("action") != "auth":
                await self.send(ws, [{"T": "error", "code": 401, "msg": "not authenticated"}])
                continue
            if msg.get("key") != self.key or msg.get("secret") != self.secret:
                self.auth_failures += 1
                await self.send(ws, [{"T": "error", "code": 402, "msg": "auth failed"}])
                return False
            await self.send(ws, [{"T": "success", "msg": "authenticated"}])
            return True

    async def request(self, ws, msg, subs: dict) -> bool:
        action = msg.get("action") if isinstance(msg, dict) else None
        if action not in ("subscribe", "unsubscribe"):
            await self.send(ws, [{"T": "error", "code": 400, "msg": "invalid syntax"}])
            return False
        self.subscribes.append(msg)
        for channel in ("trades", "quotes", "bars"):
            have = subs.get(channel, set())
            symbols = set(msg.get(channel) or [])
            subs[channel] = have | symbols if action == "subscribe" else have - symbols
        trades = sorted(subs["trades"])
        await self.send(
            ws,
            [
                {
                    "T": "subscription",
                    "trades": trades,
                    "quotes": sorted(subs["quotes"]),
                    "bars": sorted(subs["bars"]),
                    "updatedBars": [],
                    "dailyBars": [],
                    "statuses": [],
                    "lulds": [],
                    "corrections": trades,
                    "cancelErrors": trades,
                }
            ],
        )
        return True

    def wanted(self, m: dict, subs: dict) -> bool:
        return m["T"] not in CHANNEL_OF or m["S"] in subs[CHANNEL_OF[m["T"]]]

    def traded(self, subs: dict) -> list[str]:
        return sorted(subs.get("trades", ()))

    def live_trade(self, symbol: str, i: int, us: int, price: float, size: int) -> dict:
        return trade(symbol, i, us, price, size)


def main(argv: list[str] | None = None) -> None:
    ws_server.main(
        argv,
        "alpaca",
        lambda port, rate, seed: AlpacaServer(max_connections=4, port=port, default_script=[("live", rate, seed)]),
        "ALPACA_API_KEY_ID=test-key ALPACA_API_SECRET_KEY=test-secret",
    )


if __name__ == "__main__":
    main()

"""A local WebSocket server speaking Alpaca's market-data stream v2 as documented: the
welcome message, authentication by message (success, 402 auth failed, 401 before
auth, 404 auth timeout), subscription acknowledgements (trades also subscribe their
corrections and cancel errors), 406 connection limit, data points batched into arrays
and filtered by the subscription.

What each connection does after subscribing is scripted per connection:

    ("data", [messages])   send data points, ``batch`` per frame
    ("raw", text)          send one raw text frame (e.g. malformed JSON)
    ("close",)             close the connection (mid-stream)
    ("deaf", seconds)      stop reading: pings go unanswered; then drop the socket
    ("sleep", seconds)
    ("live", rate, seed)   trades of the subscribed symbols, ``rate`` a second in all (a
                           seeded random walk), until the connection closes
A connection whose script is done (or that has none) stays open, idle.

Runnable, to try `ticktape produce websocket` offline (it prints the command line):

    python -m tests.alpaca_server [--port 8765] [--rate 20] [--seed 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from datetime import datetime, timezone

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

CHANNEL_OF = {"t": "trades", "q": "quotes", "b": "bars"}
AUTH_TIMEOUT_S = 10


def rfc3339(us: int, nanos: int = 0) -> str:
    """µs since the epoch (+ extra nanoseconds) → RFC-3339 with nanoseconds, as Alpaca sends."""
    dt = datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 1_000_000:06d}{nanos:03d}Z"


def trade(symbol: str, i: int, us: int, price: float, size: int, x: str = "V") -> dict:
    return {"T": "t", "S": symbol, "i": i, "x": x, "p": price, "s": size,
            "t": rfc3339(us, 123), "c": ["@"], "z": "C"}


def quote(symbol: str, us: int, bid: float, ask: float, bid_size: int = 1, ask_size: int = 2) -> dict:
    return {"T": "q", "S": symbol, "bx": "V", "bp": bid, "bs": bid_size, "ax": "V", "ap": ask,
            "as": ask_size, "t": rfc3339(us, 456), "c": ["R"], "z": "C"}


def bar(symbol: str, start_us: int, o: float, h: float, low: float, c: float, v: int,
        n: int, vw: float) -> dict:
    return {"T": "b", "S": symbol, "o": o, "h": h, "l": low, "c": c, "v": v,
            "t": rfc3339(start_us)[:19] + "Z", "n": n, "vw": vw}


class AlpacaServer:
    def __init__(self, key: str = "test-key", secret: str = "test-secret", *,
                 scripts: list[list[tuple]] = (), batch: int = 100, max_connections: int = 1,
                 port: int = 0, default_script: list[tuple] = ()):
        self.key, self.secret = key, secret
        self.scripts = list(scripts)
        self.default_script = list(default_script)  # of the connections past ``scripts``
        self.port = port
        self.batch = batch
        self.max_connections = max_connections
        self.connections = 0  # accepted so far
        self.subscribes: list[dict] = []  # subscribe messages received
        self.auth_failures = 0
        self._active = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> "AlpacaServer":
        self._thread.start()
        async def start():
            return await serve(self._handler, "127.0.0.1", self.port, ping_interval=None, max_size=None)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v2/iex"
        return self

    def __exit__(self, *exc) -> None:
        async def shutdown():
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- protocol ----------------------------------------------------------------------
    @staticmethod
    async def _send(ws, messages: list) -> None:
        await ws.send(json.dumps(messages, separators=(",", ":")))

    async def _handler(self, ws) -> None:
        if self._active >= self.max_connections:
            await self._send(ws, [{"T": "error", "code": 406, "msg": "connection limit exceeded"}])
            await ws.close()
            return
        self._active += 1
        n = self.connections
        self.connections += 1
        try:
            await self._send(ws, [{"T": "success", "msg": "connected"}])
            if not await self._authenticate(ws):
                await ws.wait_closed()
                return
            subs = {"trades": set(), "quotes": set(), "bars": set()}
            subscribed = asyncio.Event()
            reader = asyncio.create_task(self._read_requests(ws, subs, subscribed))
            await subscribed.wait()
            for step in (self.scripts[n] if n < len(self.scripts) else self.default_script):
                if not await self._run(ws, step, subs):
                    break
            else:
                await ws.wait_closed()
            reader.cancel()
        except ConnectionClosed:
            pass
        finally:
            self._active -= 1

    async def _authenticate(self, ws) -> bool:
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT_S)
            except TimeoutError:
                await self._send(ws, [{"T": "error", "code": 404, "msg": "auth timeout"}])
                await ws.close()
                return False
            try:
                msg = json.loads(raw)
            except ValueError:
                await self._send(ws, [{"T": "error", "code": 400, "msg": "invalid syntax"}])
                continue
            if msg.get("action") != "auth":
                await self._send(ws, [{"T": "error", "code": 401, "msg": "not authenticated"}])
                continue
            if msg.get("key") != self.key or msg.get("secret") != self.secret:
                self.auth_failures += 1
                await self._send(ws, [{"T": "error", "code": 402, "msg": "auth failed"}])
                return False
            await self._send(ws, [{"T": "success", "msg": "authenticated"}])
            return True

    async def _read_requests(self, ws, subs: dict, subscribed: asyncio.Event) -> None:
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                await self._send(ws, [{"T": "error", "code": 400, "msg": "invalid syntax"}])
                continue
            action = msg.get("action")
            if action not in ("subscribe", "unsubscribe"):
                await self._send(ws, [{"T": "error", "code": 400, "msg": "invalid syntax"}])
                continue
            self.subscribes.append(msg)
            for channel in subs:
                symbols = set(msg.get(channel) or [])
                subs[channel] = subs[channel] | symbols if action == "subscribe" else subs[channel] - symbols
            trades = sorted(subs["trades"])
            await self._send(ws, [{"T": "subscription", "trades": trades, "quotes": sorted(subs["quotes"]),
                                   "bars": sorted(subs["bars"]), "updatedBars": [], "dailyBars": [],
                                   "statuses": [], "lulds": [], "corrections": trades,
                                   "cancelErrors": trades}])
            subscribed.set()

    async def _run(self, ws, step: tuple, subs: dict) -> bool:
        """One script step; False when the connection is gone after it."""
        what = step[0]
        if what == "data":
            wanted = [m for m in step[1]
                      if m["T"] not in CHANNEL_OF or m["S"] in subs[CHANNEL_OF[m["T"]]]]
            for i in range(0, len(wanted), self.batch):
                await self._send(ws, wanted[i:i + self.batch])
        elif what == "raw":
            await ws.send(step[1])
        elif what == "close":
            await ws.close(1001, "going away")
            return False
        elif what == "deaf":
            ws.transport.pause_reading()
            await asyncio.sleep(step[1])
            ws.transport.abort()
            return False
        elif what == "sleep":
            await asyncio.sleep(step[1])
        elif what == "live":
            rng, prices, i = random.Random(step[2]), {}, 0
            while True:
                symbols = sorted(subs["trades"])
                if symbols:
                    sym = symbols[i % len(symbols)]
                    prices[sym] = round(prices.get(sym, 100.0) * (1 + rng.gauss(0, 0.0005)), 2)
                    i += 1
                    await self._send(ws, [trade(sym, i, time.time_ns() // 1000, prices[sym], rng.randint(1, 300))])
                await asyncio.sleep(1 / step[1])
        else:
            raise ValueError(f"unknown script step {step!r}")
        return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.alpaca_server",
                                description="a local Alpaca-protocol stream of live-paced simulated trades")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0 = any free one)")
    p.add_argument("--rate", type=float, default=20.0, help="trades a second, all symbols (default 20)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    with AlpacaServer(max_connections=4, port=args.port, default_script=[("live", args.rate, args.seed)]) as server:
        print(f"Alpaca-protocol server at {server.url} (key test-key, secret test-secret); in another shell:\n"
              f"  ALPACA_API_KEY_ID=test-key ALPACA_API_SECRET_KEY=test-secret WEBSOCKET_URL={server.url} \\\n"
              "    .venv/bin/ticktape produce websocket --symbols AAPL,MSFT --channels trades\n"
              "Ctrl-C stops it.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

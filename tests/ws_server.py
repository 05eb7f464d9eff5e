"""What the local provider servers (tests/alpaca_server.py, tests/polygon_server.py)
share: a WebSocket server on a free loopback port, a connection limit, and per
connection a script run once the client has subscribed:

    ("data", [messages])   send data points, ``batch`` per frame, filtered by the subscription
    ("raw", text)          send one raw text frame (e.g. malformed JSON)
    ("close",)             close the connection (mid-stream)
    ("deaf", seconds)      stop reading: pings go unanswered; then drop the socket
    ("sleep", seconds)
    ("live", rate, seed)   trades of the subscribed symbols, ``rate`` a second in all (a
                           seeded random walk), until the connection closes
A connection whose script is done (or that has none) stays open, idle; connections past
``scripts`` run ``default_script``.

A subclass speaks its provider's protocol: ``welcome``, ``authenticate``, ``request``
(a subscribe/unsubscribe after auth), ``wanted`` (is a data point subscribed) and, for
"live", ``traded`` (the symbols whose trades are subscribed) and ``live_trade``.
``main`` runs one on its own, to try `ticktape produce websocket` offline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

AUTH_TIMEOUT_S = 10


class ScriptedServer:
    path = "/"

    def __init__(
        self,
        *,
        scripts: list[list[tuple]] = (),
        batch: int = 100,
        max_connections: int = 1,
        port: int = 0,
        default_script: list[tuple] = (),
    ):
        self.scripts = list(scripts)
        self.default_script = list(default_script)
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
    def __enter__(self):
        self._thread.start()

        async def start():
            return await serve(self._handler, "127.0.0.1", self.port, ping_interval=None, max_size=None)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}{self.path}"
        return self

    def __exit__(self, *exc) -> None:
        async def shutdown():
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- the provider's protocol (subclasses) ------------------------------------------
    def limit_reached(self) -> list:
        raise NotImplementedError

    async def welcome(self, ws) -> None:
        raise NotImplementedError

    async def authenticate(self, ws) -> bool:
        """Read until authenticated (True) or refused (False: the server closes)."""
        raise NotImplementedError

    async def request(self, ws, msg, subs: dict) -> bool:
        """Answer one request after auth; True when it was a subscription change."""
        raise NotImplementedError

    def wanted(self, m: dict, subs: dict) -> bool:
        raise NotImplementedError

    def traded(self, subs: dict) -> list[str]:
        raise NotImplementedError

    def live_trade(self, symbol: str, i: int, us: int, price: float, size: int) -> dict:
        raise NotImplementedError

    # -- the shared part ---------------------------------------------------------------
    @staticmethod
    async def send(ws, messages: list) -> None:
        await ws.send(json.dumps(messages, separators=(",", ":")))

    async def _handler(self, ws) -> None:
        if self._active >= self.max_connections:
            await self.send(ws, self.limit_reached())
            await ws.close()
            return
        self._active += 1
        n = self.connections
        self.connections += 1
        try:
            await self.welcome(ws)
            if not await self.authenticate(ws):
                await ws.wait_closed()
                return
            subs: dict = {}
            subscribed = asyncio.Event()
            reader = asyncio.create_task(self._read_requests(ws, subs, subscribed))
            await subscribed.wait()
            for step in self.scripts[n] if n < len(self.scripts) else self.default_script:
                if not await self._run(ws, step, subs):
                    break
            else:
                await ws.wait_closed()
            reader.cancel()
        except ConnectionClosed:
            pass
        finally:
            self._active -= 1

    async def _read_requests(self, ws, subs: dict, subscribed: asyncio.Event) -> None:
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = None
            if await self.request(ws, msg, subs):
                subscribed.set()

    async def _run(self, ws, step: tuple, subs: dict) -> bool:
        """One script step; False when the connection is gone after it."""
        what = step[0]
        if what == "data":
            wanted = [m for m in step[1] if self.wanted(m, subs)]
            for i in range(0, len(wanted), self.batch):
                await self.send(ws, wanted[i : i + self.batch])
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
                symbols = self.traded(subs)
                if symbols:
                    sym = symbols[i % len(symbols)]
                    prices[sym] = round(prices.get(sym, 100.0) * (1 + rng.gauss(0, 0.0005)), 2)
                    i += 1
                    await self.send(
                        ws, [self.live_trade(sym, i, time.time_ns() // 1000, prices[sym], rng.randint(1, 300))]
                    )
                await asyncio.sleep(1 / step[1])
        else:
            raise ValueError(f"unknown script step {step!r}")
        return True


def main(argv: list[str] | None, provider: str, make, env: str) -> None:
    """``python -m tests.<provider>_server``: ``make(port, rate, seed)`` serving live-paced
    trades until Ctrl-C, after printing where it listens and how to feed from it (``env``:
    the credentials' settings)."""
    p = argparse.ArgumentParser(
        prog=f"python -m tests.{provider}_server",
        description=f"a local {provider.capitalize()}-protocol stream of live-paced simulated trades",
    )
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0 = any free one)")
    p.add_argument("--rate", type=float, default=20.0, help="trades a second, all symbols (default 20)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    with make(args.port, args.rate, args.seed) as server:
        print(
            f"{provider.capitalize()}-protocol server at {server.url} ({env}); in another shell:\n"
            f"  {env} WEBSOCKET_URL={server.url} \\\n"
            f"    .venv/bin/ticktape produce websocket --provider {provider} --symbols AAPL,MSFT --channels trades\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass

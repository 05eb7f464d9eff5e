"""`ticktape produce sim`: the seeded market simulator publishing to md.ticks.

With no ``--start`` the simulator runs live: event time starts now and ticks are paced
at real time.  With ``--start`` it replays simulated history from that instant, paced
at ``--speed`` × real time or as fast as possible (``--speed max``).
"""

from __future__ import annotations

import itertools
import logging
import time

import numpy as np

from ticktape import metrics
from ticktape.cli import UsageError, positive_float, positive_int
from ticktape.commands.produce import parse_time
from ticktape.config import Settings
from ticktape.core.sim import MarketSimulator
from ticktape.market_calendar import market_hours

from .base import EventPublisher, StopFlag, paced
from .replay import Progress

log = logging.getLogger(__name__)
TOPIC = "md.ticks"


def add_arguments(p, parse_time, parse_speed) -> None:
    p.add_argument("--rate", type=positive_float, help="ticks per second over all symbols (SIM_TICK_RATE)")
    p.add_argument("--symbols", help="comma/space separated symbols (SYMBOLS)")
    p.add_argument("--seed", type=int, help="random seed (SIM_SEED)")
    p.add_argument("--start", type=parse_time, help="event-time start, ISO-8601 (default: now, live)")
    p.add_argument(
        "--speed",
        type=parse_speed,
        default=None,
        help="pace: N x real time or 'max' (default 1 live, max with --start)",
    )
    p.add_argument("--count", type=positive_int, help="stop after N ticks")
    p.add_argument("--duration", type=positive_float, help="stop after S seconds of event time")


def quiet_windows(spec: str, start_us: int) -> dict[str, list[tuple[int, int]]]:
    """SIM_QUIET as {symbol: [(from ts, to ts)]} (a halt, a thin symbol: no ticks then)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            syms, when = part.split("@")
            begin, length = (float(x) for x in when.split(":"))
        except ValueError:
            raise UsageError(
                f"SIM_QUIET has {part!r}; expected SYM[+SYM...]@START_S:DURATION_S, e.g. AAPL+MSFT@60:120"
            ) from None
        if begin < 0 or length <= 0:
            raise UsageError(f"SIM_QUIET has {part!r}: the start must be >= 0 and the duration > 0")
        a = start_us + int(begin * 1e6)
        for sym in syms.split("+"):
            out.setdefault(sym.strip(), []).append((a, a + int(length * 1e6)))
    return out


def run(args, s: Settings, stop: StopFlag | None = None) -> int:
    stop = stop or StopFlag()
    symbols = args.symbols.replace(",", " ").split() if args.symbols else s.symbol_list
    rate = args.rate or s.sim_tick_rate
    start = args.start if args.start is not None else (parse_time(s.sim_start) if s.sim_start else None)
    live = start is None
    speed = args.speed if args.speed is not None else (1.0 if live else None)
    seed = args.seed if args.seed is not None else s.sim_seed
    hours = market_hours(s) if s.sim_calendar else None
    if s.sim_calendar and hours is None:
        raise UsageError("SIM_CALENDAR=1 follows MARKET_CALENDAR, which is off: name a calendar (e.g. XNYS)")
    metrics.serve("producer", s)
    pub = EventPublisher(s)
    if live:
        pub.start_heartbeats("sim")
    if hours is not None:
        pub.follow_sessions(hours, "sim")
    # live event time starts once the publisher is ready: ticks leave when their ts is now
    start_us = start if start is not None else (time.time_ns() // 1000)  # start is None: live
    if hours is not None and not hours.covers(start_us):
        raise UsageError(f"SIM_CALENDAR=1: the start is outside the {hours.name} calendar's years")
    clock = None if hours is None else (lambda elapsed: hours.session_clock(start_us, elapsed))
    sim = MarketSimulator(symbols, seed=seed, tick_rate=rate, start_us=start_us, clock=clock)
    ticks = sim.ticks()
    end_us = start_us + int(args.duration * 1e6) if args.duration else None
    if end_us is not None:
        ticks = itertools.takewhile(lambda t: t["ts"] <= end_us, ticks)
    quiet = quiet_windows(s.sim_quiet, start_us)
    if quiet:
        ticks = (t for t in ticks if not any(a <= t["ts"] < b for a, b in quiet.get(t["symbol"], ())))
    if args.count:
        ticks = itertools.islice(ticks, args.count)
    log.info(
        "sim: %d symbols, %.0f ticks/s, seed %s, %s",
        len(symbols),
        rate,
        seed,
        "live" if live else f"speed {speed or 'max'}",
    )
    if live and hours is not None and not hours.is_open(start_us):
        # live ticks leave when their ts is now: wait for the open the session clock starts at
        opens = int(hours.session_clock(start_us, np.zeros(1, dtype=np.int64))[0])
        log.info("sim: %s is closed; waiting %.0f s for the open", hours.name, (opens - start_us) / 1e6)
        stop.wait((opens - time.time_ns() // 1000) / 1e6)
    # simulated history runs unpaced for long: say how far it is (live: the ticks are the news)
    progress = None if live else Progress(start_us, end_us, label="sim")
    n = ts = 0
    for tick in paced(ticks, speed, stop):
        pub.publish(TOPIC, "tick", tick)
        n, ts = n + 1, tick["ts"]
        if progress is not None and n % 1000 == 0:
            progress.update(n, ts)
    if args.duration and not stop:
        assert end_us is not None  # set whenever args.duration is
        pub.clock_reached(end_us)  # the run ends at or after a close: announce it
    pub.close()
    if progress is not None:
        progress.update(n, ts, force=True)
    log.info("sim: %d ticks published", pub.delivered)
    return 0

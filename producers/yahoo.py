"""`ticktape produce yahoo`: Yahoo Finance bars (yfinance) for a symbol list: backfill,
then poll, publishing each closed bar once to md.bars.<interval>.

* Mapping: ``bars_from_frame`` turns a yfinance history DataFrame into Bar events.
  Yahoo has no VWAP or trade count per bar: ``vwap`` is the typical price
  (high + low + close) / 3 and ``trade_count`` is 0.  The bar still being formed (its
  window not yet over) is never published.
* Once only: the last published window per symbol is kept in
  ``TICKTAPE_HOME/state/yahoo.<topic>.json``, written after the producer has flushed, so
  polls and restarts continue after it.  (A crash between the flush and the write can
  republish the last poll's bars once, with the same event ids.)
* Friendly to Yahoo: one request per symbol per poll, spaced ``--request-gap`` apart and
  spaced more while Yahoo answers with rate-limit errors; each poll asks only for bars
  since the symbol's last one.
* Errors: a symbol that fails gets one clear line naming it (repeats are quieter until
  it recovers); the others keep going.  Exit code 1 only if every symbol fails in the
  first round (offline).
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path

from ticktape import metrics
from ticktape.cli import UsageError
from ticktape.config import Settings
from ticktape.kafka_clients import topic_catalog

from .base import EventPublisher, SourceStats, StopFlag

log = logging.getLogger(__name__)
SOURCE = "yahoo"
INTERVAL_S = {"1m": 60, "2m": 120, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600}
MAX_BACKFILL_DAYS = {"1m": 7}  # Yahoo keeps 1-minute bars for 7 days, longer ones for 60
MAX_GAP_S = 10.0  # longest spacing between requests while rate limited


def add_arguments(p, parse_time, parse_speed) -> None:
    p.add_argument("--symbols", help="a file of symbols, or a comma/space separated list (SYMBOLS)")
    p.add_argument("--backfill", default="5d", help="history to publish first, in days (default 5d)")
    p.add_argument(
        "--interval",
        default="1m",
        choices=sorted(INTERVAL_S, key=INTERVAL_S.__getitem__),
        help="bar interval (default 1m; needs topic md.bars.<interval>)",
    )
    p.add_argument("--poll", type=float, default=60.0, help="seconds between polls (default 60)")
    p.add_argument("--request-gap", type=float, default=0.5, help="seconds between two requests (default 0.5)")
    p.add_argument("--once", action="store_true", help="backfill / catch up once, then exit")


def parse_symbols(text: str | None) -> list[str]:
    """A file of symbols (one or more per line, ``#`` comments) or a list."""
    if not text:
        return []
    path = Path(text)
    if path.is_file():
        text = " ".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    return text.replace(",", " ").split()


def parse_days(text: str) -> int:
    value = text[:-1] if text.endswith("d") else text
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"--backfill must be a number of days like 5d, not {text!r}")
    return int(value)


def bars_from_frame(symbol: str, frame, interval: str, now_us: int) -> list[dict]:
    """Bar events of a yfinance history DataFrame (tz-aware DatetimeIndex of window
    starts; columns Open High Low Close Volume, maybe Dividends and Stock Splits), in
    time order: only windows over by ``now_us``, aligned to the interval, without NaN."""
    if len(frame) == 0:
        return []
    if frame.index.tz is None:
        raise ValueError(f"{symbol}: bar times without a time zone")
    step = INTERVAL_S[interval] * 1_000_000
    starts = frame.index.tz_convert("UTC").as_unit("us").asi8.tolist()
    columns = [frame[c].astype(float).tolist() for c in ("Open", "High", "Low", "Close", "Volume")]
    bars = {}
    for start, o, h, lo, c, v in zip(starts, *columns):
        if start % step or start + step > now_us or any(math.isnan(x) for x in (o, h, lo, c, v)):
            continue  # a live quote row, the bar still forming, or a hole
        bars[start] = {
            "event_id": f"{symbol}:{interval}:{start}",
            "symbol": symbol,
            "interval": interval,
            "ts": start + step,
            "window_start": start,
            "window_end": start + step,
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": v,
            "vwap": (h + lo + c) / 3,
            "trade_count": 0,
        }
    return [bars[k] for k in sorted(bars)]


def fetch_yahoo(symbol: str, start: datetime, end: datetime, interval: str):
    """History of one symbol from Yahoo (network); an empty frame when there are no
    bars in the range."""
    import yfinance as yf
    from yfinance.exceptions import YFPricesMissingError

    yf.config.debug.hide_exceptions = False  # errors as exceptions, not log lines
    try:
        return yf.Ticker(symbol).history(
            start=start, end=end, interval=interval, prepost=False, actions=False, auto_adjust=False, timeout=10
        )
    except YFPricesMissingError:
        import pandas as pd

        return pd.DataFrame()


class YahooSource:
    def __init__(
        self,
        s: Settings,
        symbols: list[str],
        interval: str,
        backfill_days: int,
        *,
        publisher: EventPublisher,
        stop: StopFlag,
        fetch=fetch_yahoo,
        clock=time.time,
        request_gap: float = 0.5,
    ):
        self.symbols = symbols
        self.interval = interval
        self.topic = f"md.bars.{interval}"
        self.backfill_us = backfill_days * 86_400_000_000
        self.pub = publisher
        self.stop = stop
        self.fetch = fetch
        self.clock = clock
        self.request_gap = self.gap = request_gap
        self.stats = SourceStats(SOURCE)
        self.state_path = Path(s.home) / "state" / f"yahoo.{s.topic(self.topic)}.json"
        self.last: dict[str, int] = self._load()
        self.failing: set[str] = set()

    def _load(self) -> dict[str, int]:
        if not self.state_path.exists():
            return {}
        return {k: int(v) for k, v in json.loads(self.state_path.read_text())["last_window_start"].items()}

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"topic": self.topic, "last_window_start": self.last}, indent=1, sort_keys=True))
        tmp.replace(self.state_path)

    def cycle(self) -> int:
        """One request per symbol; publish the new closed bars, flush, remember them.
        Returns how many symbols answered."""
        answered = 0
        for i, symbol in enumerate(self.symbols):
            if self.stop or (i and self.stop.wait(self.gap)):
                break
            answered += self._poll(symbol)
        self.pub.flush()
        self._save()
        return answered

    def _poll(self, symbol: str) -> bool:
        now_us = int(self.clock() * 1_000_000)
        first = symbol not in self.last
        start_us = now_us - self.backfill_us if first else max(self.last[symbol], now_us - self.backfill_us)
        as_dt = lambda us: datetime.fromtimestamp(us / 1e6, tz=timezone.utc)  # noqa: E731
        try:
            frame = self.fetch(symbol, as_dt(start_us), as_dt(now_us), self.interval)
            if first and len(frame) == 0:
                raise LookupError("no data from Yahoo (unknown or delisted symbol?)")
            bars = bars_from_frame(symbol, frame, self.interval, now_us)
        except Exception as e:  # yfinance and its HTTP client raise many types
            self._failed(symbol, e)
            return False
        if symbol in self.failing:
            self.failing.discard(symbol)
            log.info("yahoo: %s answers again", symbol)
        self.gap = self.request_gap
        self.stats.receive("row", len(frame))
        last = self.last.get(symbol, -1)
        new = [b for b in bars if b["window_start"] > last]
        self.stats.add("duplicates", len(bars) - len(new))
        for bar in new:
            self.pub.publish(self.topic, "bar", bar)
            self.stats.latency(bar["ts"])
        if new:
            self.stats.add("published", len(new))
            self.last[symbol] = new[-1]["window_start"]
        return True

    def _failed(self, symbol: str, e: Exception) -> None:
        self.stats.add("errors")
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        if "RateLimit" in type(e).__name__:
            self.gap = min(MAX_GAP_S, max(self.gap, 0.5) * 2)
            reason += f" (spacing requests {self.gap:.1f} s apart)"
        if symbol in self.failing:
            log.debug("yahoo: %s still failing: %s", symbol, reason)
        else:
            self.failing.add(symbol)
            log.error("yahoo: %s: %s", symbol, reason)


def run(args, s: Settings, stop: StopFlag | None = None, fetch=fetch_yahoo, clock=time.time) -> int:
    stop = stop or StopFlag()
    symbols = parse_symbols(args.symbols) or s.symbol_list
    backfill = parse_days(args.backfill)
    limit = MAX_BACKFILL_DAYS.get(args.interval, 60)
    if backfill > limit:
        raise UsageError(f"Yahoo keeps {args.interval} bars for {limit} days: --backfill {limit}d at most")
    if f"md.bars.{args.interval}" not in topic_catalog():
        raise UsageError(f"no topic md.bars.{args.interval} in the topic catalog (kafka/topics.yaml)")
    if not args.poll > 0 or args.request_gap < 0:
        raise UsageError("--poll must be positive and --request-gap not negative")
    metrics.serve("yahoo", s)
    pub = EventPublisher(s, stage="yahoo")
    src = YahooSource(
        s,
        symbols,
        args.interval,
        backfill,
        publisher=pub,
        stop=stop,
        fetch=fetch,
        clock=clock,
        request_gap=args.request_gap,
    )
    log.info(
        "yahoo: %d symbols, %s bars, backfill %dd, %s",
        len(symbols),
        args.interval,
        backfill,
        "once" if args.once else f"then every {args.poll:.0f} s",
    )
    try:
        if src.cycle() == 0 and symbols:
            log.error("yahoo: no symbol answered (offline?)")
            return 1
        while not args.once and not stop.wait(args.poll):
            src.cycle()
    finally:
        pub.close()
        log.info("yahoo: %s", src.stats.summary())
    return 0

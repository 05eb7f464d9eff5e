"""`ticktape produce yahoo` with recorded yfinance frames (tests/data/yahoo_*.csv), no
network: mapping, dedupe across polls and restarts, failing symbols."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import pytest

from producers import yahoo
from producers.base import EventPublisher, StopFlag
from ticktape import kafka_clients
from ticktape.cli import UsageError
from test_websocket_source import read_topic

DATA = Path(__file__).parent / "data"
OPEN_US = 1_715_002_200_000_000  # 2024-05-06 09:30 New York = 13:30 UTC
MIN = 60_000_000


def recording(symbol: str) -> pd.DataFrame:
    """A recorded frame, as yfinance returns it."""
    frame = pd.read_csv(DATA / f"yahoo_{symbol}_1m.csv", index_col="Datetime")
    frame.index = pd.DatetimeIndex(
        pd.to_datetime(frame.index, utc=True).tz_convert("America/New_York"), name="Datetime"
    )
    return frame


class Yahoo:
    """Serves the recordings like Yahoo would: the rows of [start, now] (including the
    bar still forming); a symbol in ``broken`` raises."""

    def __init__(self, broken=()):
        self.frames = {s: recording(s) for s in ("AAPL", "MSFT")}
        self.broken = dict(broken)
        self.calls = []

    def __call__(self, symbol, start, end, interval):
        self.calls.append((symbol, int(start.timestamp() * 1e6), interval))
        if symbol in self.broken:
            raise self.broken[symbol]
        f = self.frames[symbol]
        return f[(f.index >= start) & (f.index <= end)]


def at(minutes: float):
    return lambda: (OPEN_US + minutes * MIN) / 1e6


def args(**kw):
    base = dict(symbols="AAPL,MSFT", backfill="1d", interval="1m", poll=60.0, request_gap=0.0, once=True)
    return argparse.Namespace(**(base | kw))


def test_mapping_of_a_yfinance_frame():
    frame = recording("AAPL")
    bars = yahoo.bars_from_frame("AAPL", frame, "1m", now_us=OPEN_US + 3 * MIN + 59_000_000)
    assert [b["window_start"] for b in bars] == [OPEN_US + m * MIN for m in range(3)]  # 09:33 forming
    assert bars[0] == {
        "event_id": f"AAPL:1m:{OPEN_US}",
        "symbol": "AAPL",
        "interval": "1m",
        "ts": OPEN_US + MIN,
        "window_start": OPEN_US,
        "window_end": OPEN_US + MIN,
        "open": 182.35,
        "high": 182.3802,
        "low": 182.1141,
        "close": 182.2443,
        "volume": 125954.0,
        "vwap": (182.3802 + 182.1141 + 182.2443) / 3,
        "trade_count": 0,
    }
    odd = frame.copy()
    odd.loc[pd.Timestamp("2024-05-06 09:30:41-04:00", tz="America/New_York")] = odd.iloc[0]  # live quote row
    odd.iloc[1, odd.columns.get_loc("Close")] = float("nan")
    got = yahoo.bars_from_frame("AAPL", odd.sort_index(), "1m", now_us=OPEN_US + 10 * MIN)
    assert [b["window_start"] for b in got] == [OPEN_US + m * MIN for m in (0, 2, 3, 4, 5, 6, 7, 8, 9)]
    assert yahoo.bars_from_frame("AAPL", pd.DataFrame(), "1m", OPEN_US) == []


def test_dedupe_across_polls_and_restart(settings):
    kafka_clients.ensure_topics(settings, ["md.bars.1m"])
    stop, fake = StopFlag(install_signals=False), Yahoo()
    pub = EventPublisher(settings, stage="yahoo")
    src = yahoo.YahooSource(
        settings, ["AAPL", "MSFT"], "1m", 1, publisher=pub, stop=stop, fetch=fake, clock=at(5.5), request_gap=0
    )
    assert src.cycle() == 2  # 09:30..09:34 (09:35 is forming)
    src.clock = at(8.2)
    assert src.cycle() == 2  # asks from 09:34: 09:34 again, 09:35..09:37 new
    assert fake.calls[2:] == [("AAPL", OPEN_US + 4 * MIN, "1m"), ("MSFT", OPEN_US + 4 * MIN, "1m")]
    assert (src.stats.published, src.stats.duplicates, src.stats.received) == (16, 2, {"row": 22})
    pub.close()
    # a restart: a new process continues after the persisted last windows
    assert yahoo.run(args(), settings, stop=stop, fetch=fake, clock=at(10.1)) == 0
    bars = read_topic(settings, "md.bars.1m")
    assert len(bars) == 20 and len({b["event_id"] for b in bars}) == 20
    for symbol in ("AAPL", "MSFT"):
        mine = [b for b in bars if b["symbol"] == symbol]
        assert [b["window_start"] for b in mine] == [OPEN_US + m * MIN for m in range(10)]
        assert mine == yahoo.bars_from_frame(symbol, recording(symbol), "1m", OPEN_US + 10 * MIN)


def test_a_failing_symbol_does_not_stop_the_others(settings, caplog):
    kafka_clients.ensure_topics(settings, ["md.bars.1m"])
    fake = Yahoo(broken={"BAD": LookupError("no data from Yahoo (unknown or delisted symbol?)")})
    with caplog.at_level(logging.INFO):
        code = yahoo.run(
            args(symbols="AAPL BAD MSFT"), settings, stop=StopFlag(install_signals=False), fetch=fake, clock=at(3.5)
        )
    assert code == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "yahoo: BAD: LookupError: no data from Yahoo (unknown or delisted symbol?)"
    ]
    assert sorted(b["event_id"] for b in read_topic(settings, "md.bars.1m")) == sorted(
        f"{s}:1m:{OPEN_US + m * MIN}" for s in ("AAPL", "MSFT") for m in range(3)
    )


def test_offline_every_symbol_fails_exit_1(settings, caplog):
    offline = ConnectionError("Failed to resolve 'query2.finance.yahoo.com'")
    fake = Yahoo(broken={"AAPL": offline, "MSFT": offline})
    with caplog.at_level(logging.ERROR):
        code = yahoo.run(args(), settings, stop=StopFlag(install_signals=False), fetch=fake, clock=at(3.5))
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "yahoo: AAPL: ConnectionError: Failed to resolve 'query2.finance.yahoo.com'",
        "yahoo: MSFT: ConnectionError: Failed to resolve 'query2.finance.yahoo.com'",
        "yahoo: no symbol answered (offline?)",
    ]


def test_symbols_from_a_file_and_bad_arguments(tmp_path, settings):
    f = tmp_path / "symbols.txt"
    f.write_text("# watch list\nAAPL MSFT\nBRK-B  # class B\n")
    assert yahoo.parse_symbols(str(f)) == ["AAPL", "MSFT", "BRK-B"]
    assert yahoo.parse_symbols("AAPL,MSFT") == ["AAPL", "MSFT"]
    with pytest.raises(UsageError, match="7 days"):
        yahoo.run(args(backfill="30d"), settings, fetch=Yahoo())
    with pytest.raises(UsageError, match="md.bars.5m"):
        yahoo.run(args(interval="5m"), settings, fetch=Yahoo())
    with pytest.raises(UsageError, match="number of days"):
        yahoo.run(args(backfill="five"), settings, fetch=Yahoo())

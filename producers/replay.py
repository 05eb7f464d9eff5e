"""`ticktape replay`: re-publish a time range of a topic, a CSV file or a database table.

Sources (each yields ``ReplayRecord``s, every partition's records in its own order):

* topic: start offsets from ``offsets_for_times(--from)``, then every record's event
  time (its ``ts`` field; the record timestamp for topics without an event schema) is
  checked against both bounds, so a broker whose time lookup is coarse still gives the
  exact range; a TickBatch is cut to its ticks in range (``decode`` readers get its
  ticks one by one).  A partition is finished at its first record after ``--to``, or at its
  end: nothing arrived for ``IDLE_S`` and its position is at or past the high
  watermark (the watermark alone is not trusted: some brokers report it early).
  Records keep their partition, key, value bytes and record timestamp.  The lower
  bound relies on record timestamps being at or after event time (true for every
  source of the project: a record is produced after its event happened).
* csv: a file of ticks (a header naming tick fields: ``symbol``, ``ts`` as ISO-8601 or
  µs, ``price``/``size`` and/or ``bid``/``ask``, optional others) or of bars (the
  ``ticktape indicators`` format ``time,symbol,open,high,low,close,volume`` with
  ``time`` = window start, or Yahoo's ``Date``/``Datetime`` headers, in any case;
  ``--interval`` names the bar length); see ``read_table``.
* db: the ``ticks`` or ``bars`` table (``--table``), in (event time, event id) order.

File and database events go to ``partition_for(symbol)`` (``ticktape.core.replay``), the
partition the live producers' default partitioner picks, with the event time as record
timestamp.  Output is merged across partitions by event time and paced at ``--speed``
× the original pace, or as fast as possible.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from confluent_kafka import TopicPartition

from ticktape import kafka_clients
from ticktape.cli import UsageError
from ticktape.config import Settings
from ticktape.core.bars import is_heartbeat
from ticktape.core.intervals import interval_seconds
from ticktape.core.replay import PartitionMerger, partition_for
from ticktape.core.tickbatch import expand, make_batch
from ticktape.serde import Serde, SerdeError

from .base import EventPublisher, StopFlag, paced

log = logging.getLogger(__name__)
IDLE_S = 1.0  # no record for this long (and position >= watermark) = end of a partition
MAX_BUFFERED = 20_000  # records buffered per partition before it is paused
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)


@dataclass(slots=True)
class ReplayRecord:
    partition: int
    ts: int  # event time, µs
    key: bytes | None
    value: bytes | None  # encoded event (None: a tick of a TickBatch read with decode=True)
    timestamp_ms: int  # record timestamp to publish with
    event: dict | None = None  # the decoded event, when the source has it

    def __getitem__(self, name: str):  # ``paced`` reads rec["ts"]
        return getattr(self, name)


# --- topic -------------------------------------------------------------------------------


def read_topic(
    s: Settings,
    topic: str,
    start: int | None,
    end: int | None,
    symbols: set[str] | None = None,
    stop: StopFlag | None = None,
    idle_s: float = IDLE_S,
    decode: bool = False,
    event: str | None = None,
) -> Iterator[ReplayRecord]:
    """Records of ``topic`` (a full name) with event time in [start, end], merged across
    partitions by event time.  ``decode`` keeps the decoded event on each record.
    ``event``: the topic's event type where the catalog names none (``md.bars.1d``)."""
    try:
        md = kafka_clients.topic_metadata(s, topic)
    except KeyError:
        raise UsageError(f"topic {topic} does not exist") from None
    try:
        event_type = kafka_clients.topic_spec(topic).event
    except KeyError:
        event_type = event
    serde = Serde(s.schema_registry_url)
    parts = sorted(md.partitions)
    cons = kafka_clients.consumer(s, s.group(f"replay.{uuid.uuid4().hex[:8]}"), **{"enable.auto.offset.store": False})
    try:
        start_ms = 0 if start is None else start // 1000
        found = cons.offsets_for_times([TopicPartition(topic, p, start_ms) for p in parts], timeout=10)
        # offset -1: no record at or after start (Apache Kafka); read from the end
        assign = [TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else -1) for tp in found]
        cons.assign(assign)
        # next offset to read per partition (-1 = the end: nothing at or after start)
        next_offset = {tp.partition: tp.offset for tp in assign}
        merger = PartitionMerger(parts)
        open_parts = set(parts)
        paused: set[int] = set()
        last_data = time.monotonic()
        undecodable = 0
        while open_parts:
            if stop:
                return
            batch = cons.consume(2000, 0.1)
            now = time.monotonic()
            for msg in batch:
                if msg.error() is not None:
                    continue  # partition EOF and transient errors: the end check decides
                p = msg.partition()
                assert p is not None  # a consumed message without error has its partition
                if p not in open_parts:
                    continue
                last_data = now
                next_offset[p] = msg.offset() + 1  # type: ignore[operator]  # consumed: it has one
                rec_ts_ms = msg.timestamp()[1]
                decoded = None
                if event_type is not None:
                    try:
                        # a null value raises SerdeError: counted undecodable
                        got, decoded = serde.decode(msg.value())  # type: ignore[arg-type]
                        ts = decoded["ts"]
                        if got == "tick_batch":
                            batch_records = _batch_records(serde, msg, decoded, start, end, decode)
                    except (SerdeError, KeyError, ValueError):
                        undecodable += 1
                        continue
                    if got == "tick_batch":
                        if batch_records and (symbols is None or decoded["symbol"] in symbols):
                            for rec in batch_records:
                                merger.add(p, rec.ts, rec)
                        else:
                            merger.seen(p, ts)
                        if end is not None and ts > end:  # its last tick is past the range
                            open_parts.discard(p)
                            merger.finish(p)
                            cons.pause([TopicPartition(topic, p)])
                        continue
                else:
                    ts = rec_ts_ms * 1000
                if end is not None and ts > end:
                    open_parts.discard(p)
                    merger.finish(p)
                    cons.pause([TopicPartition(topic, p)])
                    continue
                if (start is not None and ts < start) or (  # heartbeats are every symbol's
                    symbols is not None
                    and (decoded is None or not is_heartbeat(decoded))
                    and (decoded or {}).get("symbol", _key(msg)) not in symbols
                ):
                    merger.seen(p, ts)
                    continue
                merger.add(p, ts, ReplayRecord(p, ts, msg.key(), msg.value(), rec_ts_ms, decoded if decode else None))
                if merger.buffered(p) > MAX_BUFFERED and p not in paused:
                    cons.pause([TopicPartition(topic, p)])
                    paused.add(p)
            for p in [p for p in paused if merger.buffered(p) < MAX_BUFFERED // 4]:
                cons.resume([TopicPartition(topic, p)])
                paused.discard(p)
            if not batch and now - last_data >= idle_s:
                for p in sorted(open_parts - paused):
                    _, high = cons.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                    if next_offset[p] < 0 or next_offset[p] >= high:
                        open_parts.discard(p)
                        merger.finish(p)
                last_data = now
            for _, _, rec in merger.ready():
                yield rec
        for _, _, rec in merger.drain():
            yield rec
        if undecodable:
            log.warning("replay: %d undecodable records of %s skipped", undecodable, topic)
    finally:
        cons.close()


def _batch_records(
    serde: Serde, msg, batch: dict, start: int | None, end: int | None, decode: bool
) -> list[ReplayRecord]:
    """The records of a TickBatch message for a range: decoding readers get one record per
    tick (``value`` None: only its event); others the message itself when every tick is
    in range, else a batch of the ticks that are (a Tick when one)."""
    ticks = expand(batch)
    inside = [t for t in ticks if (start is None or t["ts"] >= start) and (end is None or t["ts"] <= end)]
    p, key, rec_ts_ms = msg.partition(), msg.key(), msg.timestamp()[1]
    if decode:
        return [ReplayRecord(p, t["ts"], key, None, rec_ts_ms, t) for t in inside]
    if not inside:
        return []
    if len(inside) == len(ticks):
        value = msg.value()
    elif len(inside) == 1:
        value = serde.encode("tick", inside[0], topic=msg.topic())
    else:
        value = serde.encode("tick_batch", make_batch(inside), topic=msg.topic())
    return [ReplayRecord(p, inside[-1]["ts"], key, value, rec_ts_ms)]


def _key(msg) -> str | None:
    key = msg.key()
    return key.decode(errors="replace") if key is not None else None


# --- files and tables --------------------------------------------------------------------


def _micros(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // _MICRO


TICK_NUMBERS = ("price", "size", "bid", "ask", "bid_size", "ask_size")


def bar_event(
    symbol: str,
    interval: str,
    start: int,
    o: float,
    h: float,
    lo: float,
    c: float,
    volume: float,
    vwap: float | None = None,
    trade_count: int = 0,
) -> dict:
    """A Bar event as the aggregator builds it (same event id form)."""
    end = start + interval_seconds(interval) * 1_000_000
    return {
        "event_id": f"{symbol}:{interval}:{start}",
        "symbol": symbol,
        "interval": interval,
        "ts": end,
        "window_start": start,
        "window_end": end,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": volume,
        "vwap": (h + lo + c) / 3.0 if vwap is None else vwap,
        "trade_count": trade_count,
    }


# a bars table's time column (window start): ours, Yahoo's (Date, Datetime), or the unnamed
# first column DataFrame.to_csv writes for an index ("Unnamed: 0" once pandas reads it back)
TIME_NAMES = ("time", "date", "datetime", "", "unnamed: 0")
OHLCV = ("open", "high", "low", "close", "volume")


def read_csv(path: str, interval: str | None, symbol: str | None = None) -> tuple[str, list[dict]]:
    """(event type, events in file order) of a CSV of ticks or bars; UsageError naming the line
    (see ``read_table``)."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # -sig: Excel's byte-order mark
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    try:
        with handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            # line_num after each row: its last physical line (a quoted newline spans two)
            rows = ((reader.line_num, row) for row in reader)
            return read_table(path, header, rows, interval, symbol)
    except (UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{path} is not a CSV text file ({type(e).__name__}: {e})") from None


def read_table(
    name: str, header: list[str], rows, interval: str | None, symbol: str | None = None
) -> tuple[str, list[dict]]:
    """(event type, events in row order) of a table of ticks or bars; ``rows`` gives
    (line number, cells as text).  Column names are matched case-insensitively.

    Ticks: ``symbol``, ``ts`` (ISO-8601 or µs), ``price``/``size`` and/or ``bid``/``ask``.
    Bars: a time column (``time``, Yahoo's ``Date``/``Datetime``, or an unnamed first column)
    holding the window start, ``open,high,low,close,volume`` and ``symbol`` — without that
    column every row is ``symbol``'s (a one-symbol Yahoo file); other columns (``Adj
    Close``, ``Dividends``) are ignored.  ``interval`` is the bars' length; None: the
    shortest step between two bars of a symbol.  VWAP: the typical price; trade count 0."""
    names = [h.strip().lower() for h in header]
    time_col = next((i for i, h in enumerate(names) if h in TIME_NAMES[:3]), None)
    if time_col is None and names and names[0] in TIME_NAMES[3:]:
        time_col = 0
    if time_col is not None and all(c in names for c in OHLCV):
        kind = "bar"
    elif "symbol" in names and "ts" in names and ({"price", "bid"} & set(names)):
        kind = "tick"
    else:
        raise UsageError(
            f"{name} line 1: neither ticks (symbol,ts,price|bid,...) nor bars "
            f"(time|date|datetime,[symbol,]open,high,low,close,volume)"
        )
    if kind == "bar" and "symbol" not in names and not symbol:
        raise UsageError(f"{name}: bars without a symbol column: name the symbol")
    index = {h: i for i, h in enumerate(names)}
    if kind == "bar":
        assert time_col is not None  # "bar" needs a time column (above)
        index["time"] = time_col
    events, lines = [], []
    for line, cells in rows:
        row = {h: cells[i] if i < len(cells) else "" for h, i in index.items()}
        if kind == "bar" and "symbol" not in names:
            row["symbol"] = symbol
        try:
            events.append(_bar_row(row) if kind == "bar" else _tick_row(row, line))
        except (ValueError, TypeError) as e:
            raise UsageError(f"{name} line {line}: {e}") from None
        lines.append(line)
    if not events:
        raise UsageError(f"{name}: no rows after the header")
    if kind == "bar":
        events = _with_interval(name, events, lines, interval)
    return kind, events


def _with_interval(name: str, rows: list[dict], lines: list[int], interval: str | None) -> list[dict]:
    """Bar events of parsed rows: ``interval``, else the shortest step of a symbol's bars."""
    starts: dict[str, list[tuple[int, int]]] = {}
    for r, line in zip(rows, lines):
        starts.setdefault(r["symbol"], []).append((r["start"], line))
    step = None
    for symbol, seen in starts.items():
        seen.sort()
        for (a, _), (b, line) in zip(seen, seen[1:]):
            if a == b:
                raise UsageError(f"{name} line {line}: a second {symbol} bar at {_dt(b).isoformat()}")
            step = b - a if step is None else min(step, b - a)
    if interval is None:
        if step is None:
            raise UsageError(f"{name}: one bar per symbol: the interval cannot be inferred, name it")
        interval = seconds_interval(step // 1_000_000) if step % 1_000_000 == 0 else None
        if interval is None:
            raise UsageError(f"{name}: bars {step} µs apart: not a whole number of seconds")
    return [bar_event(r["symbol"], interval, r["start"], *r["values"]) for r in rows]


def seconds_interval(seconds: int) -> str:
    """The interval of ``seconds`` in its largest whole unit (86400 → ``1d``, 90 → ``90s``)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _num(row: dict, name: str) -> float | None:
    text = (row.get(name) or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} is not a number: {text!r}") from None


def _tick_row(row: dict, line: int) -> dict:
    symbol = (row.get("symbol") or "").strip()
    if not symbol:
        raise ValueError("empty symbol")
    try:
        ts = _micros(row["ts"].strip())
    except ValueError:
        raise ValueError(f"ts is neither ISO-8601 nor microseconds: {row['ts']!r}") from None
    tick = {name: _num(row, name) for name in TICK_NUMBERS}
    if tick["price"] is None and (tick["bid"] is None or tick["ask"] is None):
        raise ValueError("a tick needs a price or both bid and ask")
    if tick["price"] is not None and tick["size"] is None:
        raise ValueError("a trade needs a size")
    seq = int(row["seq"]) if (row.get("seq") or "").strip() else line
    source = (row.get("source") or "").strip() or "csv"
    event_id = (row.get("event_id") or "").strip() or f"{source}:{symbol}:{seq}"
    return {"event_id": event_id, "symbol": symbol, "ts": ts, "source": source, "seq": seq, **tick}


def _bar_row(row: dict) -> dict:
    """A bar row's symbol, window start and OHLCV (the interval comes after every row)."""
    symbol = (row.get("symbol") or "").strip()
    if not symbol:
        raise ValueError("empty symbol")
    try:
        start = _micros(row["time"].strip())
    except ValueError:
        raise ValueError(f"time is not an ISO-8601 timestamp: {row['time']!r}") from None
    values = [_num(row, c) for c in OHLCV]
    if None in values:
        raise ValueError(f"empty {OHLCV[values.index(None)]}")
    return {"symbol": symbol, "start": start, "values": values}


def read_db(
    s: Settings, table: str, interval: str, start: int | None, end: int | None, symbols: set[str] | None
) -> Iterator[dict]:
    """Events of the ``ticks`` or ``bars`` table with ts in [start, end], in (ts, event_id)
    order (bars: of ``interval``), streamed with a server-side cursor."""
    import psycopg
    from psycopg import sql

    from sinks.tables import TABLES, EPOCH

    if not s.database_url:
        raise UsageError("no database: set DATABASE_URL or run `ticktape stack up`")
    event = {"ticks": "tick", "bars": "bar"}[table]
    spec = TABLES[event]
    where: list[str] = []
    params: list[object] = []
    if start is not None:
        where.append("ts >= %s")
        params.append(_dt(start))
    if end is not None:
        where.append("ts <= %s")
        params.append(_dt(end))
    if symbols is not None:
        where.append("symbol = ANY(%s)")
        params.append(sorted(symbols))
    if event == "bar":
        where.append("interval = %s")
        params.append(interval)
    query = sql.SQL("SELECT {} FROM {} {} ORDER BY ts, event_id").format(
        sql.SQL(", ").join(map(sql.Identifier, spec.columns)),
        sql.Identifier(table),
        sql.SQL("WHERE " + " AND ".join(where)) if where else sql.SQL(""),
    )
    times = spec.time_columns
    with psycopg.connect(s.database_url) as conn, conn.cursor(name=f"replay_{uuid.uuid4().hex[:8]}") as cur:
        cur.itersize = 5000
        cur.execute(query, params)
        for row in cur:
            values = list(row)
            for i in times:
                if values[i] is not None:
                    values[i] = (values[i] - EPOCH) // _MICRO
            yield dict(zip(spec.columns, values))


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def encode_events(events, event_type: str, partitions: int, serde: Serde, topic: str) -> Iterator[ReplayRecord]:
    """ReplayRecords of events from a file or table (partition by symbol, record time = event time)."""
    for ev in events:
        sym = ev["symbol"]
        yield ReplayRecord(
            partition_for(sym, partitions),
            ev["ts"],
            sym.encode(),
            serde.encode(event_type, ev, topic=topic),
            ev["ts"] // 1000,
            ev,
        )


# --- publishing ---------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr: events, events/s, % of the time range, ETA."""

    def __init__(self, start: int | None, end: int | None, enabled: bool = True, label: str = "replay"):
        self.start, self.end = start, end
        self.label = label
        self.t0 = time.monotonic()
        self.last = 0.0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def update(self, n: int, ts: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < (0.5 if self.tty else 5.0)):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        line = f"{self.label}: {n:,} events  {n / elapsed:,.0f}/s"
        if self.start is not None and self.end is not None and self.end > self.start:
            frac = min(1.0, max(0.0, (ts - self.start) / (self.end - self.start)))
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
            width = 24
            bar = "#" * int(frac * width) + "." * (width - int(frac * width))
            line += f"  [{bar}] {frac:6.1%}  ETA {eta:,.0f} s" if eta == eta else f"  [{bar}]"
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if force else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def publish(
    records,
    pub: EventPublisher,
    to_topic: str,
    speed: float | None,
    stop: StopFlag,
    progress: Progress | None = None,
    same_partitions: bool = True,
    partitions: int = 1,
) -> int:
    """Send records to ``to_topic`` paced at ``speed`` × original (None: max); the count sent.

    Records keep their partition when ``same_partitions`` (the target has the source's
    partition count), else go to ``partition_for(key)``."""
    n = 0
    ts = 0
    for rec in paced(records, speed, stop):
        ts = rec.ts
        partition = rec.partition if same_partitions or rec.key is None else partition_for(rec.key, partitions)
        pub.send_raw(to_topic, rec.value, rec.key, partition=partition, timestamp_ms=rec.timestamp_ms)
        n += 1
        if progress is not None:
            progress.update(n, ts)
    pub.flush()
    if progress is not None:
        progress.update(n, ts, force=True)
    return n

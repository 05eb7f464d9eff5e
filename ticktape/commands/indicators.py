"""`ticktape indicators`: the indicator engine over a CSV of bars.

Input: a header with at least ``time,symbol,open,high,low,close,volume`` in any case, or
Yahoo's ``Date``/``Datetime,Open,High,Low,Close[,Adj Close],Volume`` (no symbol column:
every row is ``--symbol``'s, else the file's stem's); ``time`` is the bar's window start
in ISO-8601 (without an offset: UTC); symbols may interleave, each symbol's times
strictly increasing.  Output: every input column as it was (extra columns pass through
untouched), then one column per indicator (``INDICATOR_NAMES``, then the outputs of the
user indicators of ``INDICATORS``), one row per input row; an empty cell where the value
is null.  It says what it wrote.  Numbers are written in Python's shortest round-trip
form, so the file is byte-for-byte reproducible.

The bars carry no VWAP, so ``vwap`` uses each bar's typical price (h+l+c)/3.  The
volatility annualization takes the bar length from ``--interval`` or, by default, from
the median time step of each symbol.  Bad input: one line naming the line, exit 2, and
no output file (the file is written to a temporary name and renamed at the end).
"""

from __future__ import annotations

import csv
import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ..api import load_indicators
from ..cli import UsageError
from ..config import settings
from ..core.indicators import INDICATOR_NAMES, BarError, compute_batch, user_values
from ..core.intervals import interval_seconds

REQUIRED = ("time", "symbol", "open", "high", "low", "close", "volume")
_NUMBERS = ("open", "high", "low", "close", "volume")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)


def register(sub):
    p = sub.add_parser("indicators", help="compute the indicator set over a CSV of bars")
    p.add_argument("--input", required=True, help="CSV of bars: time,symbol,open,high,low,close,volume")
    p.add_argument("--output", required=True, help="CSV to write: the input columns + one per indicator")
    p.add_argument(
        "--interval",
        help="bar length for the volatility annualization "
        "(1s, 1m, 5m, 1h, 1d, ...); default: each symbol's median time step",
    )
    p.add_argument("--symbol", help="the symbol of a file without a symbol column (default: the file's stem)")
    p.set_defaults(func=run)


def _micros(text: str) -> int:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // _MICRO


def read_bars(path: str, symbol: str | None = None) -> tuple[list[str], list[list[str]], list[int], dict]:
    """(header, raw rows, line number of each row, parsed columns); UsageError naming the line."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # -sig: a spreadsheet's byte-order mark
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    with handle:
        try:
            return _parse(path, csv.reader(handle), symbol or Path(path).stem)
        except (UnicodeDecodeError, csv.Error) as e:  # a binary file, a NUL byte
            raise UsageError(f"{path} is not a UTF-8 CSV file ({type(e).__name__}: {e})") from None


def _columns(header: list[str]) -> dict[str, int]:
    """Where each REQUIRED column is (names in any case; Yahoo's Date/Datetime is the time)."""
    names = [h.strip().lower() for h in header]
    pos = {c: names.index(c) for c in REQUIRED if c in names}
    alias = next((a for a in ("datetime", "date") if a in names), None)
    if "time" not in pos and alias is not None:
        pos["time"] = names.index(alias)
    return pos


def _parse(path: str, reader, symbol: str) -> tuple[list[str], list[list[str]], list[int], dict]:
    """The rows of ``read_bars``; ``symbol``: every row's when there is no symbol column."""
    header = next(reader, None) or []
    pos = _columns(header)
    missing = [c for c in REQUIRED if c not in pos and c != "symbol"]
    if missing:
        raise UsageError(
            f"{path} line 1: missing column(s) {', '.join(missing)} "
            f"(need {','.join(REQUIRED)}, or Yahoo's Date|Datetime,Open,High,Low,Close,Volume)"
        )
    clash = [c for c in header if c in INDICATOR_NAMES]
    if clash:
        raise UsageError(f"{path} line 1: input column(s) {', '.join(clash)} clash with indicator columns")
    rows, lines = [], []
    cols: dict[str, list] = {c: [] for c in REQUIRED}
    for row in reader:
        if not row:
            continue  # blank line
        where = f"{path} line {reader.line_num}"
        if len(row) != len(header):
            raise UsageError(f"{where}: {len(row)} fields, the header has {len(header)}")
        text = row[pos["time"]]
        try:
            cols["time"].append(_micros(text))
        except ValueError:
            raise UsageError(f"{where}: time is not an ISO-8601 timestamp: {text!r}") from None
        sym = row[pos["symbol"]] if "symbol" in pos else symbol
        if not sym:
            raise UsageError(f"{where}: empty symbol")
        cols["symbol"].append(sym)
        for name in _NUMBERS:
            text = row[pos[name]]
            try:
                cols[name].append(float(text))  # a NaN is refused by compute_batch, naming its line
            except ValueError:
                raise UsageError(f"{where}: {name} is not a number: {text!r}") from None
        rows.append(row)
        lines.append(reader.line_num)
    if not rows:
        raise UsageError(f"{path}: no bars after the header")
    return header, rows, lines, cols


def seconds_per_bar(symbols: list[str], times: list[int], interval: str | None) -> dict:
    """Bar length per symbol: ``interval`` for all, or each symbol's median time step."""
    if interval is not None:
        try:
            seconds = interval_seconds(interval)
        except ValueError as e:
            raise UsageError(str(e)) from None
        return {s: seconds for s in symbols}
    by_symbol: dict[str, list[int]] = {}
    for s, t in zip(symbols, times):
        by_symbol.setdefault(s, []).append(t)
    # Fewer than 2 bars: no step to measure (and too few bars for a volatility anyway).
    return {s: float(np.median(np.diff(ts))) / 1e6 if len(ts) > 1 else None for s, ts in by_symbol.items()}


def _write_atomically(path: Path, header: list[str], rows: list[list[str]], names: list[str], values: np.ndarray):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header + names)
            for row, vals in zip(rows, values.tolist()):
                writer.writerow(row + ["" if v != v else repr(v) for v in vals])
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args) -> int:
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"output directory {str(output.parent)!r} does not exist")
    user = [spec.cls for spec in load_indicators(settings())]  # ConfigError: one line, exit 2
    header, rows, lines, cols = read_bars(args.input, args.symbol)
    spb = seconds_per_bar(cols["symbol"], cols["time"], args.interval)
    try:
        values = compute_batch(
            cols["symbol"], cols["time"], cols["open"], cols["high"], cols["low"], cols["close"], cols["volume"], spb
        )
    except BarError as e:
        assert e.row is not None  # compute_batch always names the row (None only for one bar)
        raise UsageError(f"{args.input} line {lines[e.row]}: {e}") from None
    names = list(INDICATOR_NAMES) + [name for cls in user for name in cls.output_names()]
    if user:  # the bars as the indicators stage hands them over (no vwap in a CSV)
        bars = [
            {"symbol": sym, "interval": args.interval or "", "window_start": t, "vwap": None}
            | {k: cols[k][r] for k in _NUMBERS}
            for r, (sym, t) in enumerate(zip(cols["symbol"], cols["time"]))
        ]
        extra = [[np.nan if x is None else x for x in row.values()] for row in user_values(bars, user)]
        values = np.hstack([values, np.array(extra, dtype=float).reshape(len(rows), len(names) - values.shape[1])])
    _write_atomically(output, header, rows, names, values)
    symbols = sorted(set(cols["symbol"]))
    print(
        f"wrote {output}: {len(rows):,} rows of {len(symbols)} symbol(s) ({', '.join(symbols[:5])}"
        f"{' ...' if len(symbols) > 5 else ''}), the {len(header)} input columns + {len(names)} "
        "indicator columns"
    )
    return 0

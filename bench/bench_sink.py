"""PostgreSQL sink throughput: the sink's idempotent write path against a raw binary
COPY of the same rows straight into the table, in the same run, on empty tables, one
transaction per batch.  The sink path COPYs into the table under a savepoint and falls
back to staging table + INSERT … ON CONFLICT DO NOTHING when the key rejects a
duplicate; the staging path alone and a full replay (every row a duplicate) are
measured too.

    python bench/bench_sink.py            # 200k ticks, 5 runs
    python bench/bench_sink.py --quick    # smoke test

Uses DATABASE_URL (or the local stack's database); without one it starts a PostgreSQL
of its own in a temporary directory.  Writes bench/results/sink.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sinks import schema  # noqa: E402
from sinks.postgres import TableWriter  # noqa: E402
from sinks.tables import TABLES  # noqa: E402
from ticktape.config import settings  # noqa: E402
from ticktape.stack import LocalStack  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sink.json"
T0 = 1_767_225_600_000_000


def make_rows(n: int) -> list[tuple]:
    table = TABLES["tick"]
    syms = ["AAPL", "MSFT", "NVDA", "TSLA", "JPM", "XOM", "KO", "V"]
    rows = []
    for i in range(n):
        price = 100 + (i % 997) * 0.01
        rows.append(table.row({"event_id": f"sim-{i:09d}", "symbol": syms[i % 8], "ts": T0 + i * 500,
                               "source": "sim", "seq": i, "price": price, "size": 1.0 + i % 50,
                               "bid": price - 0.01, "ask": price + 0.01, "bid_size": 3.0, "ask_size": 4.0}))
    return rows


def _batches(rows, size):
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def idempotent(conn, rows, batch, staged_only=False) -> tuple[float, int]:
    tw = TableWriter(conn, TABLES["tick"])
    write = tw.write_staged if staged_only else tw.write
    inserted = 0
    start = time.perf_counter()
    for chunk in _batches(rows, batch):
        with conn.transaction(), conn.cursor() as cur:
            inserted += write(cur, chunk)
    return time.perf_counter() - start, inserted


def staged(conn, rows, batch) -> tuple[float, int]:
    return idempotent(conn, rows, batch, staged_only=True)


def raw_copy(conn, rows, batch) -> tuple[float, int]:
    tw = TableWriter(conn, TABLES["tick"])  # for the column types
    cols = sql.SQL(", ").join(map(sql.Identifier, TABLES["tick"].columns))
    stmt = sql.SQL("COPY ticks ({}) FROM STDIN (FORMAT BINARY)").format(cols)
    start = time.perf_counter()
    for chunk in _batches(rows, batch):
        with conn.transaction(), conn.cursor() as cur, cur.copy(stmt) as cp:
            cp.set_types(tw.types)
            for row in chunk:
                cp.write_row(row)
    return time.perf_counter() - start, len(rows)


PATHS = {"raw_copy": raw_copy, "staged": staged, "idempotent": idempotent, "idempotent_replay": idempotent}


def one_run(url: str, rows, batch, reverse: bool) -> dict:
    """Every path once; odd runs go in the opposite order so that no path always goes first."""
    order = ["raw_copy", "staged", "idempotent", "idempotent_replay"]
    if reverse:
        order = ["idempotent", "idempotent_replay", "staged", "raw_copy"]
    out = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name in order:
            fn = PATHS[name]
            if name != "idempotent_replay":
                conn.execute("TRUNCATE ticks")
            conn.execute("VACUUM ANALYZE ticks")
            seconds, written = fn(conn, rows, batch)
            expected = 0 if name == "idempotent_replay" else len(rows)
            assert written == expected, (name, written, expected)
            assert conn.execute("SELECT count(*) FROM ticks").fetchone()[0] == len(rows)
            out[name] = len(rows) / seconds
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000, help="rows per transaction (SINK_BATCH_SIZE)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="20k rows, 3 runs, no results file")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.runs = 20_000, 3

    own = None
    admin_url = settings().database_url
    if not admin_url:
        own = LocalStack(Path(tempfile.mkdtemp(prefix="bench-sink-")))
        admin_url = own.up(kafka=False, postgres=True, redis=False)["DATABASE_URL"]
    db = f"bench_sink_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = make_conninfo(**(conninfo_to_dict(admin_url) | {"dbname": db}))
    try:
        schema.migrate(settings(database_url=url))
        flavor = schema.status(settings(database_url=url))[0][0]["flavor"]
        rows = make_rows(args.rows)
        runs = [one_run(url, rows, args.batch, reverse=i % 2 == 1) for i in range(args.runs)]
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if own:
            own.down()

    summary = {}
    for name in ("raw_copy", "staged", "idempotent", "idempotent_replay"):
        vals = [r[name] for r in runs]
        summary[name] = {"median_rows_per_s": statistics.median(vals), "min": min(vals), "max": max(vals)}
    ratios = [r["idempotent"] / r["raw_copy"] for r in runs]
    summary["idempotent_vs_raw"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}

    print(f"sink benchmark: {args.rows} ticks, batches of {args.batch}, {args.runs} runs, {flavor}\n")
    print("| path | rows/s (median) | min | max |\n|---|---:|---:|---:|")
    labels = {"raw_copy": "raw binary COPY into `ticks` (no idempotency)",
              "staged": "staging table → INSERT … ON CONFLICT DO NOTHING, always",
              "idempotent": "**sink path** (direct COPY, staging on a duplicate)",
              "idempotent_replay": "sink path, every row already stored (replay)"}
    for name, label in labels.items():
        v = summary[name]
        print(f"| {label} | {v['median_rows_per_s']:,.0f} | {v['min']:,.0f} | {v['max']:,.0f} |")
    r = summary["idempotent_vs_raw"]
    print(f"\nsink path / raw COPY: {r['median']:.0%} (runs {r['min']:.0%} – {r['max']:.0%})")
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({
            "rows": args.rows, "batch": args.batch, "runs": args.runs, "flavor": flavor,
            "python": platform.python_version(), "machine": platform.machine(),
            "per_run": runs, "summary": summary}, indent=2) + "\n")
        print(f"written {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

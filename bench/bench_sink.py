"""PostgreSQL sink throughput: the sink's idempotent write path against a raw binary
COPY of the same rows straight into the table, in the same run, on empty tables, one
transaction per batch.  The sink path COPYs into the table under a savepoint and falls
back to staging table + INSERT … ON CONFLICT DO NOTHING when the key rejects a
duplicate; the staging path alone and a full replay (every row a duplicate) are
measured too.

    python -m bench.bench_sink            # 200k ticks, 5 runs
    python -m bench.bench_sink --quick    # smoke test

Uses DATABASE_URL (or the local stack's database, started when not running), in a
database of its own that is dropped afterwards.  Writes bench/results/sink.json.
"""

from __future__ import annotations

import sys
import time
import uuid

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.harness import Figure, bench_main, repeat, services
from sinks import schema
from sinks.postgres import TableWriter
from sinks.tables import TABLES
from ticktape.config import settings

T0 = 1_767_225_600_000_000


def make_rows(n: int) -> list[tuple]:
    table = TABLES["tick"]
    syms = ["AAPL", "MSFT", "NVDA", "TSLA", "JPM", "XOM", "KO", "V"]
    rows = []
    for i in range(n):
        price = 100 + (i % 997) * 0.01
        rows.append(
            table.row(
                {
                    "event_id": f"sim-{i:09d}",
                    "symbol": syms[i % 8],
                    "ts": T0 + i * 500,
                    "source": "sim",
                    "seq": i,
                    "price": price,
                    "size": 1.0 + i % 50,
                    "bid": price - 0.01,
                    "ask": price + 0.01,
                    "bid_size": 3.0,
                    "ask_size": 4.0,
                }
            )
        )
    return rows


def _batches(rows, size):
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


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


LABELS = {
    "raw_copy": "raw binary COPY into `ticks` (no idempotency)",
    "staged": "staging table, INSERT … ON CONFLICT DO NOTHING always",
    "idempotent": "sink path (direct COPY, staging on a duplicate)",
    "idempotent_replay": "sink path, every row already stored (replay)",
}


def run(quick: bool, runs: int) -> list[Figure]:
    n, batch = (20_000, 5000) if quick else (200_000, 5000)
    admin_url = services().database_url
    db = f"bench_sink_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = make_conninfo(**(conninfo_to_dict(admin_url) | {"dbname": db}))
    try:
        s = settings(database_url=url)
        schema.migrate(s)
        flavor = schema.status(s)[0][0]["flavor"]
        rows = make_rows(n)
        turn = iter(range(runs + 1))
        results = repeat(lambda: one_run(url, rows, batch, reverse=next(turn) % 2 == 1), runs)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    detail = {"rows": n, "batch": batch, "flavor": flavor}
    figures = [
        Figure(
            "sink",
            f"{label} ({n:,} ticks, {batch} per transaction)",
            "rows/s",
            [r[name] for r in results],
            detail=detail,
        )
        for name, label in LABELS.items()
    ]
    figures.append(
        Figure(
            "sink",
            "sink path / raw COPY, same run",
            "%",
            [100 * r["idempotent"] / r["raw_copy"] for r in results],
            goal=">= 80%",
            target=80.0,
            detail=detail,
        )
    )
    return figures


def main(argv=None) -> int:
    return bench_main("sink", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())

"""PostgreSQL sink into a compressed TimescaleDB chunk against an uncompressed one: late
data and replays into an old period (backfills, Yahoo history) go through the sink's
idempotent path, whose key check must not decompress whole segments (migration 0009
orders compressed segments by time, then event_id).

Per run, for each state of one day's chunk of ``ticks`` (holding N stored ticks):
uncompressed, then compressed with ``compress_chunk``; the sink writes, one transaction
per 5,000 rows, (a) M ticks already stored, taken across the whole day (every N/M-th:
duplicates scattered over every compressed batch), (b) M consecutive stored ticks (the
replay of a stored period, as a consumer group reset or a re-run backfill does) and (c)
M new ticks of the same day (late data).  The figures are the compressed / uncompressed
time of each, measured in the same run.

    python -m bench.bench_compressed            # N = 200k, M = 5,000, 5 runs
    python -m bench.bench_compressed --quick    # N = 20k, M = 2,000, 3 runs

Needs TimescaleDB on DATABASE_URL's server (or the local stack's); without it the
benchmark stops with one line and exit 2, and is not part of `python -m bench`.
Writes bench/results/compressed.json.
"""

from __future__ import annotations

import sys
import time
import uuid

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.bench_sink import make_rows
from bench.harness import Figure, bench_main, repeat, services
from sinks import schema
from sinks.postgres import TableWriter
from sinks.tables import TABLES
from ticktape.config import settings

BATCH = 5000


def _write(conn, rows) -> tuple[float, int]:
    tw = TableWriter(conn, TABLES["tick"])
    inserted = 0
    start = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        with conn.transaction(), conn.cursor() as cur:
            inserted += tw.write(cur, rows[i : i + BATCH])
    return time.perf_counter() - start, inserted


def one_run(url: str, stored, late) -> dict:
    """(scattered replay, period replay, late) seconds into the uncompressed and the
    compressed chunk."""
    out = {}
    m = len(late)
    scattered = stored[:: max(1, len(stored) // m)][:m]
    period = stored[(len(stored) - m) // 2 :][:m]
    with psycopg.connect(url, autocommit=True) as conn:
        for state in ("uncompressed", "compressed"):
            conn.execute("TRUNCATE ticks")
            assert _write(conn, stored)[1] == len(stored)
            if state == "compressed":
                conn.execute("SELECT compress_chunk(c) FROM show_chunks('ticks') c")
            conn.execute("ANALYZE ticks")
            times = []
            for rows, new in ((scattered, 0), (period, 0), (late, m)):
                seconds, n = _write(conn, rows)
                assert n == new, (state, n)  # a replay: every row a duplicate
                times.append(seconds)
            out[state] = tuple(times)
    return out


def run(quick: bool, runs: int) -> list[Figure]:
    n, m = (20_000, 2000) if quick else (200_000, 5000)
    admin_url = services().database_url
    db = f"bench_compressed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = make_conninfo(**(conninfo_to_dict(admin_url) | {"dbname": db}))
    try:
        # chunks compressed here, not by a job; and no retention job: the ticks are of 2026-01-01
        # and older than TSDB_RETENTION_TICKS, a job would drop their chunk mid-run
        s = settings(database_url=url, tsdb_compress_after="", tsdb_retention_ticks="", tsdb_retention_bars="")
        schema.migrate(s)
        if schema.status(s)[0][0]["flavor"] != schema.TIMESCALEDB:
            print(
                "bench_compressed: TimescaleDB is not available on the database server "
                "(plain PostgreSQL has no compression): nothing to measure",
                file=sys.stderr,
            )
            raise SystemExit(2)
        every = make_rows(n + m)  # 500 µs apart: all in the first day's chunk
        stored, late = every[:n], every[n:]
        results = repeat(lambda: one_run(url, stored, late), runs)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    detail = {"stored": n, "written": m, "batch": BATCH}
    figures = []
    whats = (
        "replay of stored ticks across the day (every row a duplicate)",
        "replay of a stored period (consecutive ticks, every row a duplicate)",
        "late ticks (new rows)",
    )
    for i, what in enumerate(whats):
        for state in ("uncompressed", "compressed"):
            figures.append(
                Figure(
                    "compressed",
                    f"sink, {what}, into the {state} chunk ({m:,} of {n:,})",
                    "rows/s",
                    [m / r[state][i] for r in results],
                    detail=detail,
                )
            )
        figures.append(
            Figure(
                "compressed",
                f"sink, {what}: compressed / uncompressed time",
                "x",
                [r["compressed"][i] / r["uncompressed"][i] for r in results],
                goal="<= 3x",
                higher_is_better=False,
                target=3.0,
                detail=detail,
            )
        )
    return figures


def main(argv=None) -> int:
    return bench_main("compressed", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())

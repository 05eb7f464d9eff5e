"""Kafka -> PostgreSQL/TimescaleDB writer, all tables of a batch in one transaction,
idempotent on each table's key (event_id plus its time column): a replayed event never
adds a row.

Per table, a batch is first COPYed (binary) straight into the table under a savepoint:
new events, the usual case, go in at raw COPY speed and the primary key rejects any
duplicate.  When it does (a redelivered or replayed batch), the savepoint is rolled
back and the rows go the conflict-tolerant way: COPY into a per-connection staging
table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING``.

When the batch's time range reaches a compressed TimescaleDB chunk (a replay or a
backfill of an old period), the rows already stored are first deleted from the staging
table by one join on the key, bounded by that range: TimescaleDB decompresses each
batch of the range once, in memory, instead of looking up a compressed batch for every
row in the key check of ``ON CONFLICT`` (about ten times slower for a replay).  What
remains goes through ``ON CONFLICT DO NOTHING`` as before (a concurrent writer).

Errors by SQLSTATE class:

* a row error — 22 (data exception: an invalid value), 23 (integrity: a CHECK or NOT
  NULL violation), 54 (program limit: a key too long for its index) — is found by
  bisecting the table's rows under savepoints; the writer returns the row as poison
  and commits the rest;
* an outage — 08 (connection), 40 (serialization failure, deadlock), 53 (insufficient
  resources: disk full, too many connections), 55 (lock not available), 57 (operator
  intervention: shutdown, statement timeout), or a connection lost without a SQLSTATE —
  is raised as ``Outage``: the runner retries the batch;
* anything else (42: a table or column that does not match the code, 0A, 58, XX, …) is
  raised as it is: no retry fixes it.
"""

from __future__ import annotations

from typing import cast

import psycopg
from psycopg import errors, sql

from ticktape import metrics
from ticktape.config import ConfigError, Settings

from .runner import Item, Outage, Poison
from .tables import TABLES, Table

ROW_CLASSES = ("22", "23", "54")  # SQLSTATE classes caused by a row's content: the row is poison
OUTAGE_CLASSES = ("08", "40", "53", "55", "57")  # the database cannot take the batch now


def row_error(e: BaseException) -> bool:
    return isinstance(e, psycopg.Error) and (e.sqlstate or "")[:2] in ROW_CLASSES


def outage(e: psycopg.Error) -> bool:
    if e.sqlstate is None:  # no answer from the server: the connection failed or was lost
        return isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError))
    return e.sqlstate[:2] in OUTAGE_CLASSES


def _compressed_time_column(conn: psycopg.Connection, table: str) -> str | None:
    """The time column of ``table`` when it is a TimescaleDB hypertable with compression
    enabled (None: plain PostgreSQL, or a table that never has compressed chunks)."""
    if cast(tuple, conn.execute("SELECT to_regclass('timescaledb_information.hypertables')").fetchone())[0] is None:
        return None
    row = conn.execute(
        "SELECT d.column_name FROM timescaledb_information.hypertables h "
        "JOIN timescaledb_information.dimensions d USING (hypertable_schema, hypertable_name) "
        "WHERE h.hypertable_schema = current_schema() AND h.hypertable_name = %s AND h.compression_enabled "
        "AND d.dimension_number = 1",
        (table,),
    ).fetchone()
    return row[0] if row else None


class TableWriter:
    """COPY + INSERT statements of one table, and its column types for binary COPY."""

    def __init__(self, conn: psycopg.Connection, table: Table):
        self.table = table
        cols = sql.SQL(", ").join(map(sql.Identifier, table.columns))
        self.stage = sql.Identifier(f"stage_{table.name}")
        target = sql.Identifier(table.name)
        conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS").format(self.stage, target)
        )
        types: dict[str, str] = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (table.name,),
            ).fetchall()
        )
        missing = [c for c in table.columns if c not in types]
        if missing:
            raise ConfigError(f"table {table.name} lacks columns {missing}: run `ticktape db migrate`")
        self.types = [types[c] for c in table.columns]
        self.prefilter = _compressed_time_column(conn, table.name)
        if self.prefilter is not None:
            key = [
                r[0]
                for r in conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                    (table.name,),
                )
            ]
            self.time_index = table.columns.index(self.prefilter)
            tcol = sql.Identifier(self.prefilter)
            self.delete_stored = sql.SQL(
                "DELETE FROM {stage} s USING {target} t WHERE {on} AND t.{tcol} BETWEEN %(lo)s AND %(hi)s"
            ).format(
                stage=self.stage,
                target=target,
                on=sql.SQL(" AND ").join(sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in key),
                tcol=tcol,
            )
            self.reaches_compressed = sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM timescaledb_information.chunks WHERE is_compressed "
                "AND hypertable_schema = current_schema() AND hypertable_name = %(table)s "
                "AND range_start <= %(hi)s AND range_end > %(lo)s)"
            )
        self.copy_direct = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, cols)
        self.copy_stage = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(self.stage, cols)
        self.insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
            target, cols, cols, self.stage
        )
        self.truncate = sql.SQL("TRUNCATE {}").format(self.stage)

    def _copy(self, cur: psycopg.Cursor, stmt, rows: list[tuple]) -> None:
        with cur.copy(stmt) as cp:
            cp.set_types(self.types)
            for row in rows:
                cp.write_row(row)

    def write(self, cur: psycopg.Cursor, rows: list[tuple]) -> int:
        """Rows new to the table (duplicates of stored events are skipped); must run
        inside a transaction."""
        try:
            with cur.connection.transaction():
                self._copy(cur, self.copy_direct, rows)
            return len(rows)
        except errors.UniqueViolation:
            return self.write_staged(cur, rows)  # some events are stored already

    def write_staged(self, cur: psycopg.Cursor, rows: list[tuple]) -> int:
        """The conflict-tolerant path: staging table, then INSERT … ON CONFLICT DO NOTHING."""
        self._copy(cur, self.copy_stage, rows)
        if self.prefilter is not None:
            times = [r[self.time_index] for r in rows if r[self.time_index] is not None]
            if times:
                bounds = {"table": self.table.name, "lo": min(times), "hi": max(times)}
                if cast(tuple, cur.execute(self.reaches_compressed, bounds).fetchone())[0]:  # one row
                    cur.execute(self.delete_stored, bounds)
        cur.execute(self.insert)
        inserted = cur.rowcount
        cur.execute(self.truncate)  # the bisection reuses the stage inside one transaction
        return inserted


class PostgresWriter:
    name = "postgres"

    def __init__(self, s: Settings):
        if not s.database_url:
            raise ConfigError("no database: set DATABASE_URL or run `ticktape stack up`")
        self.url = s.database_url
        self.conn: psycopg.Connection | None = None
        self.tables: dict[str, TableWriter] = {}

    def _connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=5, application_name="ticktape-sink-postgres"
            )
            try:
                self.tables = {t.name: TableWriter(conn, t) for t in TABLES.values()}
            except BaseException:
                conn.close()
                raise
            self.conn = conn
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def write(self, items: list[Item]) -> list[Poison]:
        groups: dict[str, list[tuple[Item, tuple]]] = {}
        poison = []
        for it in items:
            table = TABLES[it.event]
            try:
                groups.setdefault(table.name, []).append((it, table.row(it.record)))
            except (KeyError, TypeError, ValueError, OverflowError) as e:
                poison.append(Poison(it.msg, f"cannot map to table {table.name}: {e!r}"))
        if not groups:
            return poison
        try:
            conn = self._connect()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    counts = {t: self.tables[t].write(cur, [r for _, r in rows]) for t, rows in groups.items()}
            except psycopg.Error as e:
                if not row_error(e):
                    raise
                counts = {}
                with conn.transaction(), conn.cursor() as cur:
                    for t, rows in groups.items():
                        counts[t], bad = self._bisect(cur, self.tables[t], rows)
                        poison += bad
        except psycopg.Error as e:
            self.close()  # reconnect (and recreate the staging tables) on the next attempt
            if outage(e):
                raise Outage(_describe(e)) from e
            raise
        for t, n in counts.items():
            metrics.SINK_ROWS.labels(self.name, t).inc(n)
            metrics.SINK_BATCHES.labels(self.name, t).inc()
        return poison

    def _bisect(self, cur, tw: TableWriter, rows: list[tuple[Item, tuple]]) -> tuple[int, list[Poison]]:
        """Write rows under a savepoint; on a row error split until the bad rows are isolated."""
        try:
            with cur.connection.transaction():
                return tw.write(cur, [r for _, r in rows]), []
        except psycopg.Error as e:
            if not row_error(e):
                raise
            if len(rows) == 1:
                return 0, [Poison(rows[0][0].msg, f"{tw.table.name}: {_describe(e)}")]
        mid = len(rows) // 2
        n1, p1 = self._bisect(cur, tw, rows[:mid])
        n2, p2 = self._bisect(cur, tw, rows[mid:])
        return n1 + n2, p1 + p2


def _describe(e: psycopg.Error) -> str:
    """SQLSTATE and primary message (never the failing row's detail)."""
    text = e.diag.message_primary or str(e).strip().split("\n")[0]
    return f"{e.sqlstate or 'no SQLSTATE'} {type(e).__name__}: {text}"

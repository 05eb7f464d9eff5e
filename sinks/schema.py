"""Schema management: versioned, idempotent migrations (``ticktape db migrate``).

Migrations are the files ``sinks/migrations/NNNN_<name>[.<flavor>].sql``, applied in
order, each in its own transaction, and recorded in ``schema_migrations``.  A version
may exist in two flavors: ``.timescaledb.sql`` (used when the ``timescaledb`` extension
is available: hypertables, compression, continuous aggregates) and ``.postgres.sql``
(plain PostgreSQL: the same tables, keys and views).  A session-level advisory lock
serialises concurrent migrators (the stack, two sinks starting at once).

The flavor of a database is chosen once, by its first migration: TimescaleDB when the
extension is available and loads (``CREATE EXTENSION`` is tried in a connection of its
own, since a library that is not preloaded fails with FATAL and closes the connection),
plain PostgreSQL otherwise.  Later runs keep the flavor the ledger records, so enabling
TimescaleDB on a database migrated as plain PostgreSQL changes nothing (sinks/README.md
says how to move such a database to TimescaleDB).

An applied migration is immutable: its file's checksum is compared with the one the
ledger recorded, and an edited file stops ``migrate`` before anything runs (a change
goes into a new migration).  The one exception is ``AMENDED``: files rewritten so that a
new database reaches directly what a later migration does for the databases that
applied their earlier form (0002 and 0006 now order compressed segments by time then
event_id, as 0009 does, so TimescaleDB no longer warns on a first migrate); the
checksums of those earlier forms are accepted, and nothing else.

On TimescaleDB the compression and retention policies come from settings and are
reconciled on every run: a policy whose setting is unchanged is left alone (its job id,
schedule and history stay), a changed interval alters the existing job, an emptied
setting removes it.  So changing TSDB_* and migrating again takes effect.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import psycopg

from ticktape.config import ConfigError, Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
TIMESCALEDB = "timescaledb"
POSTGRES = "postgres"
_LOCK_KEY = 0x7469636B  # "tick": the advisory lock every migrator takes
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<flavor>timescaledb|postgres))?\.sql$")

# Migrations amended after they were applied somewhere: version -> checksums of their
# earlier forms, which a database may have recorded and which stay valid (see above).
AMENDED = {
    "0002": {"12b80241b6f88914"},  # 0002_time_series.timescaledb.sql: orderby without event_id
    "0006": {"bd651e5b435ac67a"},  # 0006_finite_values.sql: the same
}

# Hypertables whose old chunks are compressed (segmented by symbol, see 0002).
COMPRESSED = ("ticks", "bars", "indicators", "predictions")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str  # "0001_tables"
    flavor: str | None  # None: the same on both flavors
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def migrations(flavor: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations of one flavor, in version order (a flavored file wins over a common one)."""
    by_version: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise ConfigError(f"migration file name {path.name} is not NNNN_name[.flavor].sql")
        if m["flavor"] not in (None, flavor):
            continue
        mig = Migration(m["version"], f"{m['version']}_{m['name']}", m["flavor"], path)
        if m["version"] in by_version and by_version[m["version"]].flavor is not None:
            continue
        by_version[m["version"]] = mig
    return [by_version[v] for v in sorted(by_version)]


def _database_url(s: Settings) -> str:
    if not s.database_url:
        raise ConfigError("no database: set DATABASE_URL or run `ticktape stack up`")
    return s.database_url


def _recorded_flavor(conn: psycopg.Connection) -> str | None:
    """The flavor the database was migrated with (None: no migration applied yet)."""
    row = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
    assert row is not None  # a SELECT without FROM returns one row
    if not row[0]:
        return None
    row = conn.execute("SELECT flavor FROM schema_migrations ORDER BY version DESC LIMIT 1").fetchone()
    return row[0] if row else None


def _flavor(conn: psycopg.Connection, url: str) -> str:
    """The recorded flavor; for a new database timescaledb when the extension is
    available and loads, else postgres."""
    recorded = _recorded_flavor(conn)
    available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    if recorded is not None:
        if recorded == POSTGRES and available:
            log.info(
                "the database was migrated as plain PostgreSQL and stays so, though timescaledb is "
                "available (sinks/README.md: moving a database to TimescaleDB)"
            )
        return recorded
    if not available:
        return POSTGRES
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as probe:  # may be closed by a FATAL
            probe.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as e:  # e.g. available but not in shared_preload_libraries
        log.warning(
            "timescaledb is available but cannot be created (%s); using plain PostgreSQL",
            e.diag.message_primary or str(e).strip().splitlines()[0],
        )
        return POSTGRES
    return TIMESCALEDB


_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    flavor     text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def migrate(s: Settings) -> list[str]:
    """Apply the pending migrations; returns the names applied (empty when up to date)."""
    applied_now = []
    url = _database_url(s)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(_log_warning)
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            flavor = _flavor(conn, url)
            conn.execute(_CREATE_LEDGER)
            done: dict[str, str] = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
            pending = migrations(flavor)
            _check_unchanged(pending, done)
            for mig in pending:
                if mig.version in done:
                    continue
                with conn.transaction():
                    conn.execute(mig.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, flavor, checksum) VALUES (%s, %s, %s, %s)",
                        (mig.version, mig.name, flavor, mig.checksum),
                    )
                log.info("applied migration %s (%s)", mig.name, flavor)
                applied_now.append(mig.name)
            if flavor == TIMESCALEDB:
                _apply_policies(conn, s)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def _log_warning(diag: psycopg.errors.Diagnostic) -> None:
    """A WARNING the server sends while migrating is logged (NOTICEs are not)."""
    if diag.severity_nonlocalized == "WARNING":
        log.warning("database: %s", diag.message_primary)


def _check_unchanged(files: list[Migration], recorded: dict[str, str]) -> None:
    """ConfigError when the file of an applied migration differs from what was applied."""
    for mig in files:
        if mig.version not in recorded or recorded[mig.version] == mig.checksum:
            continue
        if recorded[mig.version] not in AMENDED.get(mig.version, ()):
            raise ConfigError(
                f"migration {mig.path.name} was edited after it was applied (checksum {mig.checksum}, "
                f"applied {recorded[mig.version]}): restore the file and put the change in a new migration"
            )


# (policy proc, config key, add function, its interval argument, remove function)
_POLICIES = {
    "compression": (
        "policy_compression",
        "compress_after",
        "add_compression_policy",
        "compress_after",
        "remove_compression_policy",
    ),
    "retention": ("policy_retention", "drop_after", "add_retention_policy", "drop_after", "remove_retention_policy"),
}


def _apply_policies(conn: psycopg.Connection, s: Settings) -> None:
    """Compression and retention policies as the settings say, changing only what differs."""
    with conn.transaction():
        for table in COMPRESSED:
            _reconcile(conn, "compression", table, s.tsdb_compress_after)
        for table, keep in (("ticks", s.tsdb_retention_ticks), ("bars", s.tsdb_retention_bars)):
            _reconcile(conn, "retention", table, keep)


def _reconcile(conn: psycopg.Connection, kind: str, table: str, after: str | None) -> None:
    """One table's policy of ``kind``: added, altered in place (same job), removed or left alone."""
    proc, key, add, arg, remove = _POLICIES[kind]
    job = conn.execute(
        "SELECT job_id, config->>%s FROM timescaledb_information.jobs "
        "WHERE proc_name = %s AND hypertable_schema = current_schema() AND hypertable_name = %s",
        (key, proc, table),
    ).fetchone()
    if not after:
        if job:
            conn.execute(f"SELECT {remove}(%s, if_exists => TRUE)", (table,))
            log.info("removed the %s policy of %s", kind, table)
        return
    if job is None:
        conn.execute(f"SELECT {add}(%s, {arg} => %s::interval, if_not_exists => TRUE)", (table, after))
        log.info("added a %s policy on %s: %s", kind, table, after)
    elif not cast(tuple, conn.execute("SELECT %s::interval = %s::interval", (job[1], after)).fetchone())[0]:  # one row
        conn.execute(
            "SELECT alter_job(%s, config => (SELECT config FROM timescaledb_information.jobs "
            "WHERE job_id = %s) || jsonb_build_object(%s::text, %s::interval::text))",
            (job[0], job[0], key, after),
        )
        log.info("%s policy of %s (job %d): %s -> %s", kind, table, job[0], job[1], after)


def status(s: Settings) -> tuple[list[dict], list[str]]:
    """(applied migrations as dicts, names of the pending ones)."""
    with psycopg.connect(_database_url(s), autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        assert row is not None  # a SELECT without FROM returns one row
        ledger = row[0]
        applied = []
        if ledger:
            cur = conn.execute(
                "SELECT version, name, flavor, checksum, applied_at FROM schema_migrations ORDER BY version"
            )
            applied = [dict(zip(("version", "name", "flavor", "checksum", "applied_at"), r)) for r in cur]
        flavor = (
            applied[-1]["flavor"]
            if applied
            else (
                TIMESCALEDB
                if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
                else POSTGRES
            )
        )
    done = {a["version"] for a in applied}
    return applied, [m.name for m in migrations(flavor) if m.version not in done]

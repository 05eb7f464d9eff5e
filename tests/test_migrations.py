"""Schema migrations: idempotent, recorded, tables = Avro fields with (event_id, time)
keys, and the bars_1h / bars_1d query surface returns the right aggregates."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from sinks import schema
from sinks.tables import TABLES
from ticktape import cli


@pytest.fixture
def db(settings, fresh_db):
    return dataclasses.replace(settings, database_url=fresh_db)


def test_migration_files_resolve_per_flavor():
    names = {f: [(m.name, m.path.name) for m in schema.migrations(f)] for f in (schema.POSTGRES, schema.TIMESCALEDB)}
    # (later migrations of other features follow these two)
    assert names[schema.POSTGRES][:2] == [
        ("0001_tables", "0001_tables.sql"),
        ("0002_time_series", "0002_time_series.postgres.sql"),
    ]
    assert names[schema.TIMESCALEDB][:2] == [
        ("0001_tables", "0001_tables.sql"),
        ("0002_time_series", "0002_time_series.timescaledb.sql"),
    ]
    assert [n for n, _ in names[schema.POSTGRES][2:]] == [n for n, _ in names[schema.TIMESCALEDB][2:]]
    for f in names:
        assert ("0009_compression_order", f"0009_compression_order.{f}.sql") in names[f]
    versions = [m.version for m in schema.migrations(schema.POSTGRES)]
    assert versions == sorted(set(versions))


def test_migrate_is_idempotent_and_recorded(db):
    every = [m.name for m in schema.migrations(schema.POSTGRES)]
    assert every[:2] == ["0001_tables", "0002_time_series"]
    assert schema.migrate(db) == every
    assert schema.migrate(db) == []
    applied, pending = schema.status(db)
    assert [a["name"] for a in applied] == every and pending == []
    with psycopg.connect(db.database_url) as conn:
        has_tsdb = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        assert {a["flavor"] for a in applied} == {schema.TIMESCALEDB if has_tsdb else schema.POSTGRES}
        for t in TABLES.values():
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum",
                    (t.name,),
                )
            ]
            assert cols == list(t.columns), t.name
            key = [
                r[0]
                for r in conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
                    "ORDER BY array_position(i.indkey, a.attnum)",
                    (t.name,),
                )
            ]
            # the compressed tables' key holds their segmentby column too (0011)
            segment = ["symbol"] if t.name in schema.COMPRESSED else []
            assert key == ["event_id", "window_start" if t.name == "bars" else "ts", *segment], t.name
        assert conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'predictions' "
            "AND column_name = 'features'"
        ).fetchone() == ("jsonb",)


def test_db_cli_migrate_and_status(db, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", db.database_url)
    assert cli.main(["db", "status"]) == 1  # pending
    assert "0001_tables" in capsys.readouterr().out
    assert cli.main(["db", "migrate"]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["applied 0001_tables", "applied 0002_time_series"]
    assert cli.main(["db", "migrate"]) == 0
    assert capsys.readouterr().out == "schema up to date\n"
    assert cli.main(["db", "status"]) == 0


def _bar(symbol, start, o, h, low, c, v, vwap, n, interval="1m"):
    step = timedelta(minutes=1) if interval == "1m" else timedelta(seconds=1)
    return (
        f"{symbol}-{interval}-{start.isoformat()}",
        symbol,
        interval,
        start + step,
        start,
        start + step,
        o,
        h,
        low,
        c,
        v,
        vwap,
        n,
    )


def test_bars_1h_and_1d_aggregate_the_1min_bars(db):
    schema.migrate(db)
    d0 = datetime(2026, 3, 2, tzinfo=timezone.utc)
    bars = [
        # AAPL, day 1, hour 10: three bars (inserted out of order)
        _bar("AAPL", d0 + timedelta(hours=10, minutes=30), 11, 13, 10, 12, 20, 11.5, 2),
        _bar("AAPL", d0 + timedelta(hours=10, minutes=0), 10, 12, 9, 11, 10, 10.5, 1),
        _bar("AAPL", d0 + timedelta(hours=10, minutes=59), 12, 12.5, 11.5, 12.25, 10, 12, 4),
        # AAPL, day 1, hour 11: one bar
        _bar("AAPL", d0 + timedelta(hours=11, minutes=5), 13, 14, 12.5, 13.5, 40, 13, 8),
        # AAPL, day 2, hour 0: one bar
        _bar("AAPL", d0 + timedelta(days=1, minutes=1), 20, 21, 19, 20.5, 5, 20, 1),
        # MSFT, day 1, hour 10
        _bar("MSFT", d0 + timedelta(hours=10, minutes=1), 300, 301, 299, 300.5, 1, 300, 1),
        # 1 s bars are not part of the 1 h view
        _bar("AAPL", d0 + timedelta(hours=10, minutes=0), 999, 999, 999, 999, 999, 999, 9, interval="1s"),
    ]
    with psycopg.connect(db.database_url) as conn:
        cols = ", ".join(TABLES["bar"].columns)
        conn.cursor().executemany(f"INSERT INTO bars ({cols}) VALUES ({', '.join(['%s'] * 13)})", bars)
        conn.commit()
        hours = conn.execute(
            "SELECT bucket, symbol, open, high, low, close, volume, vwap, trade_count, bar_count "
            "FROM bars_1h ORDER BY symbol, bucket"
        ).fetchall()
        days = conn.execute(
            "SELECT bucket, symbol, open, high, low, close, volume, vwap, trade_count, bar_count "
            "FROM bars_1d ORDER BY symbol, bucket"
        ).fetchall()
    h = lambda n: d0 + timedelta(hours=n)  # noqa: E731
    assert hours == [
        (h(10), "AAPL", 10, 13, 9, 12.25, 40, (10.5 * 10 + 11.5 * 20 + 12 * 10) / 40, 7, 3),
        (h(11), "AAPL", 13, 14, 12.5, 13.5, 40, 13, 8, 1),
        (h(24), "AAPL", 20, 21, 19, 20.5, 5, 20, 1, 1),
        (h(10), "MSFT", 300, 301, 299, 300.5, 1, 300, 1, 1),
    ]
    assert days == [
        (d0, "AAPL", 10, 14, 9, 13.5, 80, pytest.approx((10.5 * 10 + 11.5 * 20 + 12 * 10 + 13 * 40) / 80), 15, 4),
        (h(24), "AAPL", 20, 21, 19, 20.5, 5, 20, 1, 1),
        (d0, "MSFT", 300, 301, 299, 300.5, 1, 300, 1, 1),
    ]


def test_an_edited_applied_migration_is_refused(db, monkeypatch, capsys):
    schema.migrate(db)
    tables = schema.migrations(schema.POSTGRES)[0]
    with psycopg.connect(db.database_url, autocommit=True) as conn:
        # the ledger holds what was applied; a file that differs from it is an edit
        conn.execute("UPDATE schema_migrations SET checksum = 'a1b2c3d4e5f60718' WHERE version = '0001'")
    msg = (
        f"migration 0001_tables.sql was edited after it was applied (checksum {tables.checksum}, "
        "applied a1b2c3d4e5f60718): restore the file and put the change in a new migration"
    )
    with pytest.raises(schema.ConfigError) as refused:
        schema.migrate(db)
    assert str(refused.value) == msg
    monkeypatch.setenv("DATABASE_URL", db.database_url)
    assert cli.main(["db", "migrate"]) == 2
    assert capsys.readouterr().err == f"ticktape: error: {msg}\n"


def test_the_earlier_forms_of_amended_migrations_are_accepted(db):
    schema.migrate(db)
    earlier = next(iter(schema.AMENDED["0006"]))
    with psycopg.connect(db.database_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = %s WHERE version = '0006'", (earlier,))
    assert schema.migrate(db) == []
    with psycopg.connect(db.database_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'a1b2c3d4e5f60718' WHERE version = '0006'")
    with pytest.raises(schema.ConfigError, match="0006_finite_values.sql was edited after it was applied"):
        schema.migrate(db)


def test_a_first_migrate_draws_no_warning_from_the_server(db, caplog):
    with caplog.at_level("WARNING", logger="sinks.schema"):
        schema.migrate(db)
        schema.migrate(db)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


def _timescaledb(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is not None


def _policy_jobs(url: str) -> dict[tuple[str, str], tuple[int, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT proc_name, hypertable_name, job_id, coalesce(config->>'compress_after', config->>'drop_after') "
            "FROM timescaledb_information.jobs WHERE proc_name IN ('policy_compression', 'policy_retention')"
        )
        return {(p, t): (j, after) for p, t, j, after in rows}


def test_policies_keep_their_jobs_across_migrations(db):
    schema.migrate(db)
    if not _timescaledb(db.database_url):
        pytest.skip("timescaledb is not available on this PostgreSQL: no policies (plain-PostgreSQL flavor)")
    s = dataclasses.replace(db, tsdb_compress_after="7 days", tsdb_retention_ticks="30 days", tsdb_retention_bars="")
    schema.migrate(s)
    first = _policy_jobs(db.database_url)
    assert {k: v[1] for k, v in first.items()} == {
        **{("policy_compression", t): "7 days" for t in schema.COMPRESSED},
        ("policy_retention", "ticks"): "30 days",
    }
    assert schema.migrate(s) == []
    assert _policy_jobs(db.database_url) == first  # same job ids, same config
    changed = dataclasses.replace(s, tsdb_compress_after="2 days", tsdb_retention_ticks="")
    schema.migrate(changed)
    after = _policy_jobs(db.database_url)
    assert after == {
        **{("policy_compression", t): (first[("policy_compression", t)][0], "2 days") for t in schema.COMPRESSED}
    }


def test_compressed_tables_order_by_the_whole_key(db):
    schema.migrate(db)
    if not _timescaledb(db.database_url):
        pytest.skip("timescaledb is not available on this PostgreSQL: no compression (plain-PostgreSQL flavor)")
    with psycopg.connect(db.database_url) as conn:
        rows = conn.execute(
            "SELECT hypertable_name, attname, segmentby_column_index, orderby_column_index, orderby_asc "
            "FROM timescaledb_information.compression_settings ORDER BY 1, 3 NULLS LAST, 4"
        ).fetchall()
    time_col = {"bars": "window_start"}
    assert rows == [
        r
        for t in sorted(schema.COMPRESSED)
        for r in (
            (t, "symbol", 1, None, None),
            (t, time_col.get(t, "ts"), None, 1, False),
            (t, "event_id", None, 2, True),
        )
    ]

"""Which schema flavor a database gets, on a real PostgreSQL whose installation has a
``timescaledb`` extension of the test's own: a copy of this machine's PostgreSQL (the
binaries find their share directory next to them) whose extension directory also holds
timescaledb.control.  Its install script is what the test needs: one that ends the
session with FATAL, as the real library does when it is not in
shared_preload_libraries, or one that succeeds."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from sinks import schema
from ticktape.config import settings as make_settings
from ticktape.stack import LocalStack, timescaledb_installed

FATAL_SCRIPT = "SELECT pg_terminate_backend(pg_backend_pid());\n"  # the session ends mid-CREATE


def _pg_config(flag: str) -> Path:
    pg_config = Path(shutil.which("pg_ctl")).resolve().parent / "pg_config"
    return Path(subprocess.run([str(pg_config), flag], capture_output=True, text=True, check=True).stdout.strip())


def link_entries(src: Path, dst: Path, leave_out: Callable[[str], bool]) -> None:
    """A new directory ``dst`` of links to the entries of ``src``, but those left out."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if not leave_out(entry.name):
            (dst / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def installation():
    """(bin dir of the copy, its extension dir)."""
    bindir, share, lib = (_pg_config(f) for f in ("--bindir", "--sharedir", "--pkglibdir"))
    prefix = Path(os.path.commonpath([bindir, share, lib]))
    root = Path(tempfile.mkdtemp(prefix="ticktape-pgcopy-"))
    root.chmod(0o755)  # the postgres user runs these binaries
    new_bin = root / bindir.relative_to(prefix)
    new_bin.mkdir(parents=True)
    for name in ("postgres", "initdb", "pg_ctl", "pg_config"):
        shutil.copy2(bindir / name, new_bin / name)  # copies: PostgreSQL resolves symlinks to find its tree
    # The copy never has a timescaledb of its own, even where this machine's PostgreSQL has one:
    # its library and extension files are left out (and never written through a link).
    link_entries(lib, root / lib.relative_to(prefix), lambda name: name.startswith("timescaledb"))
    new_share = root / share.relative_to(prefix)
    link_entries(share, new_share, lambda name: name == "extension")
    ext = new_share / "extension"
    link_entries(share / "extension", ext, lambda name: name.startswith("timescaledb"))
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o755)
    yield new_bin, ext
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack(installation, monkeypatch):
    new_bin, ext = installation
    monkeypatch.setenv("PATH", f"{new_bin}{os.pathsep}{os.environ['PATH']}")
    home = Path(tempfile.mkdtemp(prefix="ticktape-flavor-"))
    local = LocalStack(home)
    yield local, ext
    local.down()
    shutil.rmtree(home, ignore_errors=True)


def fake_extension(ext: Path, script: str) -> None:
    (ext / "timescaledb.control").write_text("default_version = '0.0'\nrelocatable = false\n")
    (ext / "timescaledb--0.0.sql").write_text(script)


def remove_fake(ext: Path) -> None:
    for name in ("timescaledb.control", "timescaledb--0.0.sql"):
        (ext / name).unlink(missing_ok=True)


def db_settings(local: LocalStack, tmp_path):
    url = local.up(kafka=False, postgres=True, redis=False)["DATABASE_URL"]
    return dataclasses.replace(make_settings(home=str(tmp_path)), database_url=url)


def test_a_timescaledb_that_does_not_load_falls_back_to_plain_postgresql(stack, tmp_path, caplog):
    local, ext = stack
    fake_extension(ext, FATAL_SCRIPT)
    try:
        s = db_settings(local, tmp_path)
        applied = schema.migrate(s)
        assert applied[0] == "0001_tables" and "0002_time_series" in applied
        assert any("cannot be created" in r.getMessage() for r in caplog.records)
        done, pending = schema.status(s)
        assert {m["flavor"] for m in done} == {schema.POSTGRES} and pending == []
        with psycopg.connect(s.database_url) as conn:
            assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'bars_1h'").fetchone() == ("v",)
    finally:
        remove_fake(ext)


def test_timescaledb_enabled_later_keeps_the_recorded_flavor(stack, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sinks.schema")
    local, ext = stack
    s = db_settings(local, tmp_path)
    assert schema.migrate(s)  # plain PostgreSQL: no timescaledb yet
    fake_extension(ext, "")  # now it is available and would load
    try:
        assert schema.migrate(s) == []
        with psycopg.connect(s.database_url) as conn:
            assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None
        assert any("stays so" in r.getMessage() for r in caplog.records)
        assert {m["flavor"] for m in schema.status(s)[0]} == {schema.POSTGRES}
    finally:
        remove_fake(ext)


def test_the_stack_preloads_timescaledb_only_when_it_is_installed(stack, installation):
    new_bin, ext = installation
    pg_ctl = str(new_bin / "pg_ctl")
    assert not timescaledb_installed(pg_ctl)
    fake_extension(ext, "")
    try:
        assert not timescaledb_installed(pg_ctl)  # a control file without the library is not installed
    finally:
        remove_fake(ext)

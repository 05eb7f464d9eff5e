"""bench/bench_compressed.py: sink writes into a compressed chunk against an uncompressed
one where TimescaleDB is installed; one line and exit 2 on plain PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg

from ticktape.config import REPO_ROOT


def test_bench_compressed_measures_on_timescaledb_and_refuses_plain_postgresql(services, tmp_path):
    out = tmp_path / "compressed.json"
    env = dict(os.environ) | services | {"TICKTAPE_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_compressed", "--quick", "--output", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    with psycopg.connect(services["DATABASE_URL"]) as conn:
        # the extension loads only when preloaded (sinks/schema.py picks the flavor the same way)
        tsdb = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() and (
            "timescaledb" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        )
    if not tsdb:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == (
            "bench_compressed: TimescaleDB is not available on the database server (plain PostgreSQL has no "
            "compression): nothing to measure"
        )
        assert not out.exists()
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())["figures"]
    assert [f["unit"] for f in figures] == ["rows/s", "rows/s", "x"] * 3
    assert all(len(f["values"]) == 3 and f["min"] > 0 for f in figures)
    assert [f["goal"] for f in figures if f["unit"] == "x"] == ["<= 3x"] * 3

"""`python -m bench --quick` runs every benchmark end to end on the real services and
writes one table and one JSON (tiny sizes; speed is never asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.__main__ import available
from ticktape.config import REPO_ROOT


@pytest.mark.timeout(1800)  # every benchmark, the peers' venv included: ~10 minutes here
def test_bench_quick_runs_every_benchmark(services, tmp_path):
    out = tmp_path / "all.json"
    env = dict(os.environ) | services | {"TICKTAPE_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["runs"] == 3 and result["benchmarks"] == available()
    assert {"cpu", "cpu_count", "python"} <= set(result["machine"])
    figures = result["figures"]
    assert {f["benchmark"] for f in figures} == set(available())
    header = "| benchmark | figure | median | spread (min – max) | goal |"
    assert proc.stdout.splitlines()[0] == header
    assert len([line for line in proc.stdout.splitlines() if line.startswith("| ")]) == len(figures) + 1
    for f in figures:
        assert len(f["values"]) == 3 and f["min"] <= f["median"] <= f["max"], f["name"]
        assert f["min"] > 0, f["name"]  # every figure measured something
    sink = {f["name"]: f for f in figures if f["benchmark"] == "sink"}
    assert sink["sink path / raw COPY, same run"]["goal"] == ">= 80%"
    assert all(f["detail"]["rows"] == 20_000 for f in sink.values())
    latency = [f for f in figures if f["benchmark"] == "latency"]  # intake, then p50 and p99 of four stages
    assert latency[0]["name"] == "worker intake (50 symbols, 500 ticks/s)" and latency[0]["min"] > 400
    assert len(latency) == 9 and all(min(f["detail"]["observations"]) > 0 for f in latency[1:])
    assert [f["goal"] for f in latency].count("< 100 ms") == 4

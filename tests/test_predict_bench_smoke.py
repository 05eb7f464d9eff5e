"""The inference benchmark runs end to end (a tiny --quick run; speed is not asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_predict_quick(tmp_path):
    out = tmp_path / "predict.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_predict.py"), "--quick",
                           "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "median/s" in proc.stdout and "p99 ms" in proc.stdout
    result = json.loads(out.read_text())
    assert result["unit"] == "predictions/s" and result["quick"] is True
    batch, single = result["cases"].values()
    assert single["predictions"] == 100 and single["batch"] == 1 and batch["batch"] == 256
    assert batch["predictions"] == 3 * (260 - 199)  # every complete indicator set scored once
    for case in (batch, single):
        assert len(case["rates"]) == case["runs"] == 3
        assert 0 < case["min"] <= case["median"] <= case["max"] and 0 < case["p50_s"] <= case["p99_s"]

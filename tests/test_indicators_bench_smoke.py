"""The indicator benchmark runs end to end (a tiny --quick run; speed is not asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_indicators_quick(tmp_path):
    out = tmp_path / "indicators.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_indicators.py"), "--quick",
                           "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "median/s" in proc.stdout and "not assessed (quick run)" in proc.stdout
    result = json.loads(out.read_text())
    assert result["unit"] == "symbol-bars/s" and result["quick"] is True and result["target_met"] is None
    counts = [case["symbol_bars"] for case in result["cases"].values()]
    assert counts == [20 * 300, 2 * 300]  # every bar of every symbol went through
    for case in result["cases"].values():
        assert len(case["rates"]) == case["runs"] == 3
        assert 0 < case["min"] <= case["median"] <= case["max"]

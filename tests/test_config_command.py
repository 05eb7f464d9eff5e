"""`ticktape config`: the values `ticktape run` uses (config/run.env), where each comes
from, and --json; config/run.env itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields

import pytest

from ticktape import config
from ticktape.config import REPO_ROOT, ConfigError, run_defaults


def _config(tmp_path, *args, **env):
    environ = {k: v for k, v in os.environ.items() if k not in {f.metadata["env"] for f in fields(config.Settings)}}
    environ |= {"TICKTAPE_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)} | env
    done = subprocess.run(
        [sys.executable, "-m", "ticktape.cli", "config", *args],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_run_env_holds_the_main_jobs_settings():
    assert run_defaults() == {
        "STRATEGY_INTERVAL": "1s",
        "TICK_BATCH_MAX": "500",
        "TICK_BATCH_MS": "100",
        "EXEC_MARKET_DATA": "bars",
        "MARKET_CALENDAR": "off",
    }


def test_a_run_env_line_that_is_no_setting_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "run.env"
    bad.write_text("# ok\nSTRATEGY_INTERVAL=1s\nSTRATEGY_INTERVL=1m\n")
    monkeypatch.setattr(config, "RUN_DEFAULTS_FILE", bad)
    with pytest.raises(ConfigError, match=r"run.env:3: 'STRATEGY_INTERVL=1m' is not SETTING=value"):
        run_defaults()


def test_config_shows_what_run_uses_and_marks_where_it_comes_from(tmp_path):
    rows = json.loads(_config(tmp_path, "--json", SYMBOLS="AAPL,MSFT", TICK_BATCH_MS="50"))
    assert rows["STRATEGY_INTERVAL"] == {"value": "1s", "default": "1m", "source": "run"}
    assert rows["EXEC_MARKET_DATA"] == {"value": "bars", "default": "ticks", "source": "run"}
    assert rows["TICK_BATCH_MS"] == {"value": "50", "default": "20", "source": "environment"}
    assert rows["SYMBOLS"]["value"] == "AAPL,MSFT" and rows["SYMBOLS"]["source"] == "environment"
    assert rows["SIM_SEED"] == {"value": "42", "default": "42", "source": "default"}
    assert rows["KAFKA_BOOTSTRAP_SERVERS"] == {"value": "", "default": "", "source": "default"}
    lines = _config(tmp_path, TICK_BATCH_MS="50").splitlines()
    assert "STRATEGY_INTERVAL=1s  # ticktape run: config/run.env; default '1m'" in lines
    assert "TICK_BATCH_MS=50  # set in the environment; default '20'" in lines
    assert "SIM_SEED=42" in lines

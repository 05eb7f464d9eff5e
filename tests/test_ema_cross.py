"""examples/ema_cross.py: its decisions exactly, and the README's "Write your own
strategy" followed as written — it trades in `ticktape run`, and the in-process and
kafka-mode backtests of what the run recorded equal live and each other."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from examples.ema_cross import EmaCross
from ticktape.api import load_strategy
from ticktape.config import REPO_ROOT
from ticktape.config import settings as make_settings
from ticktape.core import desks
from ticktape.core.strategy import StrategyConfig
from ticktape.scrape import scrape
from test_strategy_api import indicator_set
from trading_events import MIN, T0

CLOSES = [10.0, 10.0, 10.0, 12.0, 8.0, 8.0, 9.0, 11.0]


def ema_desk(**params) -> desks.StrategyDesk:
    spec = load_strategy(make_settings(strategy="examples.ema_cross:EmaCross", strategy_params=json.dumps(params)))
    return desks.StrategyDesk(StrategyConfig(), spec)


def signals(desk, closes, start=0):
    out = []
    for i, c in enumerate(closes, start):
        out += [
            (e["target_position"], e["reason"])
            for k, e in desk.on_input("indicator_set", indicator_set("AAPL", T0 + i * MIN, c))
            if k == "signal"
        ]
    return out


def test_crosses_exactly():
    # fast 2 (alpha 2/3), slow 3 (alpha 1/2); nothing before the 3rd bar; 12 lifts fast above slow
    assert signals(ema_desk(fast=2, slow=3, notional=1000), CLOSES) == [
        (83.0, "ema2 11.3333 > ema3 11.0000 @ 12"),
        (0.0, "ema2 9.1111 < ema3 9.5000 @ 8"),
        (90.0, "ema2 10.2634 > ema3 9.9375 @ 11"),
    ]
    assert signals(ema_desk(fast=2, slow=3, notional=1000, shorts=True), CLOSES) == [
        (83.0, "ema2 11.3333 > ema3 11.0000 @ 12"),
        (-125.0, "ema2 9.1111 < ema3 9.5000 @ 8"),
        (90.0, "ema2 10.2634 > ema3 9.9375 @ 11"),
    ]


def test_a_restart_mid_way_continues_as_if_none_happened():
    straight = ema_desk(fast=2, slow=3, notional=1000, shorts=True)
    want = signals(straight, CLOSES)
    first = ema_desk(fast=2, slow=3, notional=1000, shorts=True)
    got = signals(first, CLOSES[:5])
    saved = json.loads(json.dumps(first.symbol_state("AAPL")))
    assert saved["s"] == {"fast_ema": pytest.approx(9.1111, abs=1e-4), "slow_ema": 9.5, "bars": 5}
    again = ema_desk(fast=2, slow=3, notional=1000, shorts=True)
    again.set_symbol_state("AAPL", saved)
    got += signals(again, CLOSES[5:], start=5)
    assert got == want


# --- the README, as written -----------------------------------------------------------


def readme_commands() -> list[list[str]]:
    """The shell lines of the README's "Write your own strategy" section, as argv lists."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Write your own strategy\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_section_trades_live_and_in_both_backtest_modes_with_identical_results(
    services, fresh_db, fresh_redis, tmp_path
):
    commands = readme_commands()
    assert [c[:2] for c in commands] == [
        ["export", "STRATEGY=examples.ema_cross:EmaCross"],
        [".venv/bin/ticktape", "run"],
        [".venv/bin/ticktape", "backtest"],
        [".venv/bin/ticktape", "backtest"],
        [".venv/bin/ticktape", "backtest"],
    ]
    prefix = f"t{uuid.uuid4().hex[:10]}."
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRATEGY", "TICKTAPE_"))} | {
        "KAFKA_BOOTSTRAP_SERVERS": services["KAFKA_BOOTSTRAP_SERVERS"],
        "DATABASE_URL": fresh_db,
        "REDIS_URL": fresh_redis,
        "TOPIC_PREFIX": prefix,
        "TICKTAPE_HOME": str(tmp_path / "home"),
        "SYMBOLS": "AAPL,MSFT,NVDA,TSLA",
        "SIM_TICK_RATE": "200",
        "PYTHONPATH": str(REPO_ROOT),
    }
    env |= dict(item.split("=", 1) for item in commands[0][1:])
    runs, outputs = [], []

    def ticktape(argv):
        argv = [runs[0] if a == "RUN_A" else runs[1] if a == "RUN_B" else a for a in argv]
        done = subprocess.run(
            [sys.executable, "-m", "ticktape.cli", *argv[1:]],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
        return done.stdout

    # ticktape run: the main job trades EmaCross; while it runs, its run.json and the
    # worker's /metrics say what it trades
    run = subprocess.Popen(
        [sys.executable, "-m", "ticktape.cli", *commands[1][1:]],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    doc = info = None
    try:
        run_file = tmp_path / "home" / "run.json"
        deadline = time.monotonic() + 300
        while run.poll() is None and info is None and time.monotonic() < deadline:
            if run_file.exists():
                doc = json.loads(run_file.read_text())
                worker = {p["role"]: p["port"] for p in doc["processes"]}["worker"]
                info = next(iter(scrape(worker).get("ticktape_strategy_info", ())), (None,))[0]
            time.sleep(1.0)
        out, err = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
        subprocess.run(
            [sys.executable, "-m", "ticktape.cli", "stack", "down"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            timeout=120,
        )
    assert run.returncode == 0, out + err
    assert "strategy examples.ema_cross:EmaCross" in out
    sha = hashlib.sha256((REPO_ROOT / "examples" / "ema_cross.py").read_bytes()).hexdigest()
    assert doc["strategy"] == {
        "class": "examples.ema_cross:EmaCross",
        "params": {"fast": 5, "slow": 20},
        "source_sha256": sha,
    }
    assert info == {"class": "examples.ema_cross:EmaCross", "params": '{"fast": 5, "slow": 20}', "source_sha256": sha}
    with psycopg.connect(fresh_db) as conn:
        by_strategy = dict(conn.execute("SELECT strategy, count(*) FROM signals GROUP BY strategy").fetchall())
        live_fills = conn.execute("SELECT count(*) FROM fills").fetchone()[0]
    assert set(by_strategy) == {"ema_cross"} and by_strategy["ema_cross"] >= 2 and live_fills >= 1, by_strategy

    for argv in commands[2:4]:  # in process (with the live check), then kafka mode
        out = ticktape(argv)
        [run_id] = re.findall(r"^backtest ([0-9a-f]{12}) stored", out, re.M)
        runs.append(run_id)
        [orders] = re.findall(r"^  orders (\d+)   fills", out, re.M)
        assert int(orders) >= 2, out
    assert "live check: every event equals the live pipeline's" in outputs[0], outputs[0]
    assert re.search(r"^\s+signal\s+live\s+(\d+)\s+backtest\s+\1\s+equal$", outputs[0], re.M), outputs[0]
    compared = ticktape(commands[4])
    assert "equity and trades: identical" in compared, compared
    with psycopg.connect(fresh_db) as conn:
        shas = conn.execute(
            "SELECT mode, results_sha256 FROM backtest_runs WHERE run_id = ANY(%s) ORDER BY mode", (runs,)
        ).fetchall()
    assert [m for m, _ in shas] == ["inprocess", "kafka"] and shas[0][1] == shas[1][1]


class Slower(EmaCross):
    """Another class, other defaults: compare must name both."""

    name = "ema_cross_slow"

    def __init__(self, symbol, *, fast=10, slow=50, **rest):
        super().__init__(symbol, fast=fast, slow=slow, **rest)


def test_compare_names_the_strategies_of_two_runs(services, fresh_db):
    import pandas

    import ticktape.backtest

    df = pandas.read_csv(REPO_ROOT / "tests" / "data" / "GOOG_daily.csv", index_col=0)
    common = {"symbols": "GOOG", "store": True, "DATABASE_URL": fresh_db}
    a = ticktape.backtest.run(
        df, STRATEGY="examples.ema_cross:EmaCross", STRATEGY_PARAMS='{"fast": 5, "slow": 20}', **common
    )
    b = ticktape.backtest.run(df, STRATEGY="test_ema_cross:Slower", **common)
    assert a.counts["orders"] >= 10 and b.counts["orders"] >= 4 and a.sha256 != b.sha256
    # the class itself and a dict of parameters: the same run
    same = ticktape.backtest.run(df, symbols="GOOG", strategy=EmaCross, strategy_params={"fast": 5, "slow": 20})
    assert (same.sha256, same.figures) == (a.sha256, a.figures)
    with psycopg.connect(fresh_db) as conn:
        stored = conn.execute(
            "SELECT strategy, strategy_params, strategy_sha256 FROM backtest_runs WHERE run_id = %s", (a.run_id,)
        ).fetchone()
    sha_a = hashlib.sha256((REPO_ROOT / "examples" / "ema_cross.py").read_bytes()).hexdigest()
    sha_b = hashlib.sha256((REPO_ROOT / "tests" / "test_ema_cross.py").read_bytes()).hexdigest()
    assert stored == ("examples.ema_cross:EmaCross", {"fast": 5, "slow": 20}, sha_a)
    done = subprocess.run(
        [sys.executable, "-m", "ticktape.cli", "backtest", "compare", a.run_id, b.run_id],
        cwd=REPO_ROOT,
        env=os.environ | {"DATABASE_URL": fresh_db},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "strategy: examples.ema_cross:EmaCross vs test_ema_cross:Slower" in lines
    assert 'strategy parameters: {"fast": 5, "slow": 20} vs {}' in lines
    assert f"strategy source sha256: {sha_a} vs {sha_b}" in lines
    assert lines[-1] == "input data: same; parameters: 3 differ; equity and trades: differ"
    again = subprocess.run(
        [sys.executable, "-m", "ticktape.cli", "backtest", "compare", a.run_id, a.run_id],
        cwd=REPO_ROOT,
        env=os.environ | {"DATABASE_URL": fresh_db},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.stdout.splitlines()[-1] == "input data: same; parameters: same; equity and trades: identical"
    assert not any(
        line.startswith(("strategy:", "strategy parameters:", "strategy source")) for line in again.stdout.splitlines()
    )
    assert re.search(r"^strategy\s+examples.ema_cross:EmaCross\s+examples.ema_cross:EmaCross$", again.stdout, re.M)

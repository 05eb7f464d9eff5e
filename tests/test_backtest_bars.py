"""Backtests of bars and from Python: `ticktape backtest --source csv` on the repo's real
daily bars (tests/data/GOOG_daily.csv) and `ticktape.backtest.run` on a DataFrame of the
same rows give the same figures, equity curve and trades; Yahoo headers in any case;
bad files refused in one line; a DataFrame of ticks equals the command on their CSV."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import pandas
import psycopg
import pytest

import ticktape.backtest
from producers.replay import read_csv, seconds_interval
from ticktape import registry
from ticktape.cli import UsageError
from ticktape.config import REPO_ROOT
from ticktape.core.features import FEATURE_NAMES, Bars, build_dataset
from ticktape.core.ml import TrainParams, train
from ticktape.core.sim import MarketSimulator
from ticktape.core.simbars import simulated_bars

GOOG = REPO_ROOT / "tests" / "data" / "GOOG_daily.csv"
TRAIN_BEFORE = "2009-01-01"  # the model learns from the bars before this
# a strategy that trades often on a small model, as env vars and as keyword settings
TRADING = {"STRATEGY_ENTER_P": "0.52", "STRATEGY_EXIT_P": "0.51", "STRATEGY_MIN_HOLD_BARS": "1"}
T0 = 1_704_205_800_000_000  # 2024-01-02T14:30:00Z
TICK_SYMBOLS = ["AAA", "BBB", "CCC"]


def _us(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp() * 1_000_000)


class Stack:
    """A database of this module's own with two registered models (a 1d one trained on the
    early GOOG bars, active, and a 1m one for ticks), and the env of a `ticktape` process."""

    def __init__(self, s):
        self.s = s
        _, bars = read_csv(str(GOOG), None, "GOOG")
        early = [b for b in bars if b["window_start"] < _us(TRAIN_BEFORE)]
        daily = train(
            build_dataset(Bars.from_events(early), "1d", 5),
            list(FEATURE_NAMES),
            0.2,
            TrainParams(rounds=30),
            "direction",
        )
        hist = simulated_bars(TICK_SYMBOLS, seed=5, start_us=T0 - 600 * 60_000_000, minutes=480, tick_rate=5.0)
        short = [f for f in FEATURE_NAMES if f not in ("sma_200_rel", "sma_50_rel")]
        minute = train(build_dataset(Bars.from_events(hist), "1m", 5), short, 0.2, TrainParams(rounds=15), "direction")
        for t in (daily, minute):
            registry.register(s, t)
        registry.activate(s, daily.version)
        self.daily, self.minute = daily.version, minute.version
        self.env = (
            dict(os.environ)
            | TRADING
            | {
                "DATABASE_URL": s.database_url,
                "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
                "REDIS_URL": s.redis_url,
                "TOPIC_PREFIX": s.topic_prefix,
                "TICKTAPE_HOME": s.home,
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        # the same settings for the notebook function
        self.kwargs = TRADING | {"DATABASE_URL": s.database_url, "TICKTAPE_HOME": s.home}

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ticktape.cli", "backtest", *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def stored(self, run_id: str) -> dict:
        """The stored run: its row, equity curve and trades."""
        with psycopg.connect(self.s.database_url) as conn:
            row = conn.execute(
                "SELECT metrics, counts, results_sha256, data_fingerprint, model_version, symbols, "
                "parameters FROM backtest_runs WHERE run_id = %s",
                (run_id,),
            ).fetchone()
            equity = conn.execute(
                "SELECT ts, cash, market_value, equity, gross_exposure, realized_pnl, "
                "unrealized_pnl, drawdown FROM backtest_equity WHERE run_id = %s ORDER BY ts",
                (run_id,),
            ).fetchall()
            trades = conn.execute(
                "SELECT event_id, order_id, ts, symbol, side, quantity, price, commission, "
                "slippage_bps FROM backtest_trades WHERE run_id = %s ORDER BY ts, symbol, "
                "event_id",
                (run_id,),
            ).fetchall()
        keys = ("metrics", "counts", "sha256", "fingerprint", "model", "symbols", "parameters")
        return dict(zip(keys, row)) | {"equity": equity, "trades": trades}


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory):
    from pipeline import module_settings, new_database
    from sinks import schema

    home = tmp_path_factory.mktemp("bars-home")
    with new_database(services["DATABASE_URL"]) as url:
        s = module_settings(services, home, url)
        schema.migrate(s)
        yield Stack(s)


def run_id_of(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    found = re.findall(r"^backtest ([0-9a-f]{12}) stored", proc.stdout, re.M)
    assert len(found) == 1, proc.stdout
    return found[0]


def frame_rows(df: pandas.DataFrame) -> list[tuple]:
    """A result DataFrame's rows as the database gives them back (times as datetimes)."""
    return [
        tuple(v.to_pydatetime() if isinstance(v, pandas.Timestamp) else v for v in row)
        for row in df.itertuples(index=False)
    ]


def test_daily_bars_from_the_command_and_from_a_dataframe_are_the_same_run(stack):
    proc = stack.cli("--source", "csv", "--input", str(GOOG), "--symbols", "GOOG")
    cli = stack.stored(run_id_of(proc))
    assert (
        "backtest: 2,148 1d bars, 2004-08-19T00:00:00.000000Z .. 2013-03-02T00:00:00.000000Z, 1 symbols" in proc.stdout
    )
    counts = cli["counts"]
    assert counts["bars"] == {"1d": 2148} and counts["predictions"] > 1800
    assert counts["fills"] >= 50 and counts["rejections"] == {}  # the model trades the daily bars
    assert cli["model"] == stack.daily and cli["symbols"] == ["GOOG"]
    params = cli["parameters"]
    assert params["intervals"] == ["1d"] and params["strategy"]["interval"] == "1d"
    assert params["market_data"] == "bars" and params["strategy"]["enter_p"] == 0.52

    api = ticktape.backtest.run(pandas.read_csv(GOOG), symbols="GOOG", **stack.kwargs)
    assert api.figures == cli["metrics"] and api.counts == counts and api.sha256 == cli["sha256"]
    assert (
        frame_rows(
            api.equity[
                ["ts", "cash", "market_value", "equity", "gross_exposure", "realized_pnl", "unrealized_pnl", "drawdown"]
            ]
        )
        == cli["equity"]
    )
    assert frame_rows(api.trades) == cli["trades"] and len(cli["trades"]) == counts["fills"]
    assert api.equity["ts"].iloc[0] == pandas.Timestamp("2004-08-19", tz="UTC")
    assert api.equity["equity"].iloc[0] == 1_000_000.0 and len(api.events["fill"]) == counts["fills"]
    assert not api.stored

    # the time as the index, settings by field name, stored: the same run again
    again = ticktape.backtest.run(
        pandas.read_csv(GOOG, index_col=0, parse_dates=True),
        symbols=["GOOG"],
        store=True,
        strategy_enter_p=0.52,
        strategy_exit_p=0.51,
        strategy_min_hold_bars=1,
        database_url=stack.s.database_url,
        home=stack.s.home,
    )
    assert again.stored and again.sha256 == cli["sha256"]
    stored = stack.stored(again.run_id)
    assert stored["metrics"] == cli["metrics"] and stored["fingerprint"] == cli["fingerprint"]

    # other settings, other run: the figures follow them
    other = ticktape.backtest.run(
        pandas.read_csv(GOOG), symbols="GOOG", **(stack.kwargs | {"STRATEGY_NOTIONAL": 20000})
    )
    assert other.sha256 != cli["sha256"] and other.figures["traded_notional"] > cli["metrics"]["traded_notional"]


def test_yahoo_headers_in_any_case_and_the_file_stem_as_symbol(stack, tmp_path):
    with GOOG.open(newline="") as f:
        rows = list(csv.reader(f))
    path = tmp_path / "GOOG.csv"  # no symbol column, no --symbols: the stem names it
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["DATE", "open", "HIGH", "Low", "cLOSE", "Adj Close", "VOLUME"])
        for r in rows[1:]:
            w.writerow(r[:5] + [str(float(r[4]) / 2)] + r[5:])  # Adj Close is ignored
    ours = tmp_path / "ours.csv"  # our own format, with a symbol column, the interval given
    with ours.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "symbol", "open", "high", "low", "close", "volume"])
        for r in rows[1:]:
            w.writerow([f"{r[0]}T00:00:00Z", "GOOG", *r[1:]])
    runs = [
        stack.stored(run_id_of(stack.cli("--source", "csv", "--input", str(p), *extra)))
        for p, extra in ((GOOG, ["--symbols", "GOOG"]), (path, []), (ours, ["--bars", "1d"]))
    ]
    assert len({r["sha256"] for r in runs}) == 1 and len({r["fingerprint"] for r in runs}) == 1
    assert runs[1]["symbols"] == ["GOOG"] and runs[0]["counts"]["fills"] >= 50

    # --from/--to select bars by window start: a later period, the same engine
    late = stack.stored(
        run_id_of(
            stack.cli(
                "--source",
                "csv",
                "--input",
                str(GOOG),
                "--symbols",
                "GOOG",
                "--from",
                TRAIN_BEFORE,
                "--to",
                "2012-12-31",
            )
        )
    )
    assert late["counts"]["bars"] == {"1d": sum(TRAIN_BEFORE <= r[0] <= "2012-12-31" for r in rows[1:])}
    assert late["sha256"] != runs[0]["sha256"]


def test_bars_from_the_bars_table_and_topic_equal_the_file(stack):
    from confluent_kafka.admin import NewTopic
    from sinks import postgres
    from sinks.tables import TABLES
    from ticktape import kafka_clients
    from ticktape.serde import Serde

    _, bars = read_csv(str(GOOG), None, "GOOG")
    with psycopg.connect(stack.s.database_url) as conn, conn.cursor() as cur:
        postgres.TableWriter(conn, TABLES["bar"]).write(cur, [TABLES["bar"].row(b) for b in reversed(bars)])
    # md.bars.1d is no catalog topic (the worker makes no daily bars): created here
    topic = stack.s.topic("md.bars.1d")
    adm = kafka_clients.admin(stack.s)
    adm.create_topics([NewTopic(topic, num_partitions=3)])[topic].result()
    prod, serde = kafka_clients.producer(stack.s), Serde()
    for b in bars:
        prod.produce(topic, value=serde.encode("bar", b), key=b"GOOG")
    prod.produce(topic, value=serde.encode("bar", bars[7]), key=b"GOOG")  # redelivered: counts once
    assert prod.flush(30) == 0
    file = stack.stored(
        run_id_of(
            stack.cli(
                "--source",
                "csv",
                "--input",
                str(GOOG),
                "--symbols",
                "GOOG",
                "--from",
                "2010-01-01",
                "--to",
                "2010-12-31",
            )
        )
    )
    for source in ("db", "topic"):
        got = stack.stored(
            run_id_of(
                stack.cli(
                    "--source",
                    source,
                    "--bars",
                    "1d",
                    "--symbols",
                    "GOOG",
                    "--from",
                    "2010-01-01",
                    "--to",
                    "2010-12-31",
                )
            )
        )
        assert got["sha256"] == file["sha256"] and got["fingerprint"] == file["fingerprint"], source
        assert got["counts"]["bars"] == {"1d": 252} and got["counts"]["fills"] > 0


def test_a_sweep_of_bars_runs_each_value_as_its_single_run(stack):
    single = stack.stored(run_id_of(stack.cli("--source", "csv", "--input", str(GOOG), "--symbols", "GOOG")))
    sweep = stack.cli(
        "--source",
        "csv",
        "--input",
        str(GOOG),
        "--symbols",
        "GOOG",
        "--sweep",
        "STRATEGY_ENTER_P=0.52,0.56",
        "--jobs",
        "2",
    )
    assert sweep.returncode == 0, sweep.stderr
    rows = re.findall(r"^\s+(\S+)\s+([0-9a-f]{12})\s", sweep.stdout, re.M)
    assert [p for p, _ in rows] == ["0.52", "0.56"]
    swept = [stack.stored(run_id) for _, run_id in rows]
    assert swept[0]["sha256"] == single["sha256"] and swept[0]["metrics"] == single["metrics"]
    assert swept[1]["sha256"] != single["sha256"] and swept[1]["parameters"]["strategy"]["enter_p"] == 0.56


@pytest.mark.parametrize(
    "content, args, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", [], "is not a CSV text file"),
        (b",Open,High,Low,Close,Volume\n", [], "no rows after the header"),
        (b"when,Open,High,Low,Close,Volume\n2004-08-19,1,2,0.5,1.5,10\n", [], "line 1: neither ticks"),
        (
            b"Date,Open,High,Low,Close,Volume\n2004-08-19,1,2,0.5,1.5,10\n2004-08-20,1,x,0.5,1.5,10\n",
            [],
            "line 3: high is not a number: 'x'",
        ),
        (b"Date,Open,High,Low,Close,Volume\n2004-08-19,1,2,0.5,1.5,10\n", [], "the interval cannot be inferred"),
        (
            b"Date,Open,High,Low,Close,Volume\n2004-08-19,1,2,0.5,1.5,10\n2004-08-20,1,2,0.5,1.5,10\n",
            ["--mode", "kafka"],
            "bars run in-process only: drop --mode kafka",
        ),
        (b"Date,Open,High,Low,Close,Volume\n2004-08-19,1,2,0.5,1.5,10\n", ["--bars", "1w"], "--bars: bad interval"),
        (b"symbol,ts,price,size\nAAA,1,10.0,1\n", ["--bars", "1d"], "holds ticks: drop --bars"),
    ],
)
def test_bad_files_are_refused_in_one_line(stack, tmp_path, content, args, message):
    path = tmp_path / "GOOG.csv"
    path.write_bytes(content)
    proc = stack.cli("--source", "csv", "--input", str(path), *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ticktape: error: ")
    assert message in proc.stderr, proc.stderr


def test_the_notebook_function_refuses_what_the_command_refuses(stack):
    df = pandas.read_csv(GOOG)
    with pytest.raises(UsageError, match="bars without a symbol column: name the symbol"):
        ticktape.backtest.run(df, **stack.kwargs)
    with pytest.raises(UsageError, match="NOT_A_SETTING is not a setting"):
        ticktape.backtest.run(df, symbols="GOOG", NOT_A_SETTING=1)
    with pytest.raises(UsageError, match="STRATEGY_ENTER_P=0.4: must be"):
        ticktape.backtest.run(df, symbols="GOOG", **(stack.kwargs | {"STRATEGY_ENTER_P": 0.4}))
    with pytest.raises(UsageError, match=r"^no 1d bars from the start to the end in DataFrame$"):
        ticktape.backtest.run(df.assign(symbol="GOOG"), symbols="MSFT", **stack.kwargs)
    with pytest.raises(UsageError, match=r"^DataFrame line 4: empty close$"):
        ticktape.backtest.run(df.assign(Close=df.Close.where(df.index != 2)), symbols="GOOG", **stack.kwargs)


def test_a_dataframe_of_ticks_equals_the_command_on_their_csv(stack, tmp_path):
    sim = MarketSimulator(TICK_SYMBOLS, seed=9, tick_rate=10.0, start_us=T0)
    ticks = []
    while not ticks or ticks[-1]["ts"] < T0 + 60 * 60_000_000:
        ticks.extend(sim.next_chunk())
    columns = ["event_id", "symbol", "ts", "price", "size", "bid", "ask", "bid_size", "ask_size", "source", "seq"]
    path = tmp_path / "ticks.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows([t.get(c) for c in columns] for t in ticks)
    run = stack.stored(run_id_of(stack.cli("--source", "csv", "--input", str(path), "--model", stack.minute)))
    assert run["counts"]["bars"]["1m"] >= 60 * len(TICK_SYMBOLS) and run["counts"]["fills"] >= 5
    assert run["symbols"] == TICK_SYMBOLS and run["parameters"]["market_data"] == "ticks"
    api = ticktape.backtest.run(pandas.read_csv(path), model=stack.minute, **stack.kwargs)
    assert api.sha256 == run["sha256"] and api.figures == run["metrics"] and api.counts == run["counts"]
    assert frame_rows(api.trades) == run["trades"]


def test_intervals_are_named_in_their_largest_whole_unit():
    assert [seconds_interval(n) for n in (86400, 7 * 86400, 3600, 5400, 60, 90, 1)] == [
        "1d",
        "7d",
        "1h",
        "90m",
        "1m",
        "90s",
        "1s",
    ]

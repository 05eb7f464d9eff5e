"""Backtests: performance figures on known series, the in-process engine's determinism,
kafka mode against in-process mode, isolation from live topics and tables, and a
backtest against the live pipeline over the same period."""

from __future__ import annotations

import math

import pytest

from ticktape.core import performance as perf

MIN = 60_000_000
DAY = 86_400_000_000
T0 = 1_704_205_800_000_000  # 2024-01-02T14:30:00Z


# --- performance figures ----------------------------------------------------------------


def test_resample_last_keeps_the_last_value_per_period():
    points = [(T0, 1.0), (T0 + 1, 2.0), (T0 + MIN - 1, 3.0), (T0 + MIN, 4.0), (T0 + 3 * MIN + 5, 5.0)]
    assert perf.resample_last(points, MIN) == [(T0, 1.0), (T0 + MIN, 4.0), (T0 + 4 * MIN, 5.0)]


def test_figures_on_a_known_series():
    ten_days = 10 * DAY
    curve = [(T0 + i * ten_days, v) for i, v in enumerate([100.0, 110.0, 99.0, 108.9, 108.9])]
    rets = [0.1, -0.1, 0.1, 0.0]
    ppy = 365 / 10
    mean = 0.025
    std = math.sqrt(sum((r - mean) ** 2 for r in rets) / 3)
    down = math.sqrt(0.01 / 4)
    out = perf.summarize(curve, [], ten_days)
    assert out["total_return"] == pytest.approx(0.089, abs=1e-15)
    assert out["sharpe"] == pytest.approx(mean / std * math.sqrt(ppy), rel=1e-12)
    assert out["sortino"] == pytest.approx(mean / down * math.sqrt(ppy), rel=1e-12)
    assert out["cagr"] == pytest.approx(1.089 ** (365 / 40) - 1, rel=1e-12)  # +8.9 % in 40 days
    assert out["max_drawdown"] == pytest.approx(0.1, abs=1e-15)  # 110 -> 99
    assert (out["win_rate"], out["closing_trades"], out["turnover"]) == (None, 0, 0.0)
    assert out["span_us"] == 40 * DAY and perf.annualized_note(out) is None
    shown = {k: perf.display(k, out[k]) for k in ("total_return", "cagr", "sharpe", "max_drawdown", "span_us")}
    assert shown == {
        "total_return": "8.9000 %",
        "cagr": "117.7105 %",
        "sharpe": "1.578",
        "max_drawdown": "10.0000 %",
        "span_us": "40.0 days",
    }


def test_annualized_figures_are_not_meaningful_below_the_minimum_span():
    # the same series in minutes: CAGR would be -100 % or overflow, Sharpe in the thousands
    curve = [(T0 + i * MIN, v) for i, v in enumerate([100.0, 110.0, 99.0, 108.9, 108.9])]
    out = perf.summarize(curve, [], MIN)
    assert (out["cagr"], out["sharpe"], out["sortino"]) == (None, None, None)
    assert out["total_return"] == pytest.approx(0.089, abs=1e-15) and out["max_drawdown"] == pytest.approx(0.1)
    assert perf.annualized_note(out) == (
        "CAGR, Sharpe and Sortino are not meaningful over an equity curve of 4.0 min: "
        "annualized figures need at least 30 days"
    )
    # exactly the minimum span annualizes; a microsecond less does not
    at = perf.summarize([(T0, 100.0), (T0 + 15 * DAY, 99.0), (T0 + 30 * DAY, 101.0)], [], 15 * DAY)
    assert at["cagr"] == pytest.approx(1.01 ** (365 / 30) - 1, rel=1e-12) and at["sharpe"] is not None
    short = perf.summarize([(T0, 100.0), (T0 + 15 * DAY, 99.0), (T0 + 30 * DAY - 1, 101.0)], [], 15 * DAY)
    assert (short["cagr"], short["sharpe"]) == (None, None)
    assert perf.annualized_note(short).startswith(
        "CAGR, Sharpe and Sortino are not meaningful over an equity curve of 30.0 days"
    )
    assert perf.annualized_note({"cagr": None}) is None  # a run stored before the span was


def test_cagr_over_two_years():
    year = 365 * 86400 * 1_000_000
    out = perf.summarize([(T0, 100.0), (T0 + year, 90.0), (T0 + 2 * year, 121.0)], [], year)
    assert out["cagr"] == pytest.approx(0.1, rel=1e-12)
    assert out["max_drawdown"] == pytest.approx(0.1, rel=1e-12)


def test_degenerate_curves_have_no_ratios():
    flat = [(T0 + i * MIN, 100.0) for i in range(5)]
    out = perf.summarize(flat, [], MIN)
    assert (out["sharpe"], out["sortino"], out["max_drawdown"], out["total_return"]) == (None, None, 0.0, 0.0)
    one = perf.summarize([(T0, 100.0)], [], MIN)
    assert (one["cagr"], one["sharpe"]) == (None, None)


def _fill(symbol, side, qty, price):
    return {"symbol": symbol, "side": side, "quantity": qty, "price": price, "commission": 1.0}


def test_win_rate_and_turnover_from_fills():
    fills = [
        _fill("A", "BUY", 10, 100.0),
        _fill("A", "BUY", 10, 110.0),  # long 20 @ 105
        _fill("A", "SELL", 5, 104.0),  # closes 5: -5 (loss)
        _fill("A", "SELL", 25, 107.0),  # closes 15: +30, short 10 @ 107
        _fill("A", "BUY", 10, 100.0),  # closes 10: +70
        _fill("B", "SELL", 3, 50.0),
        _fill("B", "BUY", 3, 50.0),
    ]  # short, flat: 0 (not a win)
    assert perf.closing_trade_pnls(fills) == [-5.0, 30.0, 70.0, 0.0]
    curve = [(T0, 1000.0), (T0 + MIN, 1000.0)]
    out = perf.summarize(curve, fills, MIN)
    assert out["win_rate"] == 0.5 and out["closing_trades"] == 4
    notional = 1000 + 1100 + 520 + 25 * 107 + 1000 + 150 + 150
    assert out["traded_notional"] == notional and out["turnover"] == notional / 1000.0


# --- the in-process pipeline -------------------------------------------------------------

import json  # noqa: E402
from collections import defaultdict  # noqa: E402

from ticktape.core import pipeline  # noqa: E402
from ticktape.core.bars import BarAggregator  # noqa: E402
from ticktape.core.features import FEATURE_NAMES, Bars, FeatureState, build_dataset  # noqa: E402
from ticktape.core.indicators import INDICATOR_NAMES, IndicatorState, indicator_event  # noqa: E402
from ticktape.core.ml import Model, TrainParams, train  # noqa: E402
from ticktape.core.replay import partition_for  # noqa: E402
from ticktape.core.sim import MarketSimulator  # noqa: E402
from ticktape.core.simbars import simulated_bars  # noqa: E402

SYMS = ["AAA", "BBB", "CCC", "DDD", "EEE"]
SHORT = [f for f in FEATURE_NAMES if f not in ("sma_200_rel", "sma_50_rel")]


@pytest.fixture(scope="module")
def model():
    hist = simulated_bars(SYMS, seed=5, start_us=T0 - 600 * MIN, minutes=480, tick_rate=5.0)
    t = train(build_dataset(Bars.from_events(hist), "1m", 5), SHORT, 0.2, TrainParams(rounds=15), "direction")
    return Model.load(t.artifact, t.metadata)


def sim_by_partition(minutes: float, rate: float = 10.0, partitions: int = 6, symbols=SYMS, seed: int = 9):
    sim = MarketSimulator(symbols, seed=seed, tick_rate=rate, start_us=T0)
    ticks = []
    end = T0 + int(minutes * MIN)
    while not ticks or ticks[-1]["ts"] < end:
        ticks.extend(sim.next_chunk())
    out = defaultdict(list)
    for t in ticks:
        if t["ts"] <= end:
            out[partition_for(t["symbol"], partitions)].append(t)
    return dict(out)


def agent_path(ticks_by_partition, intervals, grace_us, model):
    """The agents' way, event by event: aggregator per partition fed tick by tick, one
    IndicatorState and FeatureState per (interval, symbol), one model call per set."""
    bars, inds, preds = [], [], []
    ind_states, feat_states = {}, {}
    for p in sorted(ticks_by_partition):
        agg = BarAggregator(intervals, grace_us)
        for tick in ticks_by_partition[p]:
            for bar in agg.add(tick).bars:
                bars.append(bar)
                key = (bar["interval"], bar["symbol"])
                st = ind_states.setdefault(key, IndicatorState(bar["interval"]))
                ind = indicator_event(bar, st.update(bar))
                inds.append(ind)
                vec = feat_states.setdefault(key, FeatureState()).update(ind)
                if ind["interval"] == model.interval:
                    preds.extend(model.predictions([(ind, vec)])[0])
    return bars, inds, preds


def test_pipeline_equals_the_agents_event_by_event_path(model):
    ticks = sim_by_partition(45)
    out = pipeline.run(ticks, ["1s", "1m"], 500_000, model)
    bars, inds, preds = agent_path(ticks, ["1s", "1m"], 500_000, model)
    key = lambda e: (e["ts"], e["event_id"])  # noqa: E731
    assert sorted(out.bars["1s"] + out.bars["1m"], key=key) == sorted(bars, key=key)
    assert json.dumps(sorted(out.indicators, key=key)) == json.dumps(sorted(inds, key=key))
    assert json.dumps(sorted(out.predictions, key=key)) == json.dumps(sorted(preds, key=key))
    n_1m = len(out.bars["1m"])
    assert n_1m >= 40 * len(SYMS) and len(out.predictions) == n_1m - out.skipped_predictions
    assert len(out.predictions) > 50  # the short feature list fills after ~21 bars


def test_pipeline_is_byte_identical_twice(model):
    ticks = sim_by_partition(20)
    a = pipeline.run(ticks, ["1s", "1m"], 500_000, model)
    b = pipeline.run(sim_by_partition(20), ["1s", "1m"], 500_000, model)
    assert json.dumps(a.__dict__) == json.dumps(b.__dict__)


def test_feature_rows_equal_feature_state_bit_for_bit_on_edge_cases():
    import random

    import numpy as np

    rng = random.Random(3)
    sets, names = [], [n for n in INDICATOR_NAMES]
    for sym in ("AAA", "BBB", "CCC"):
        for i in range(60):
            ind = {
                "event_id": f"{sym}:{i}",
                "symbol": sym,
                "interval": "1m",
                "ts": T0 + i * MIN,
                "close": rng.uniform(50, 150),
                "volume": rng.choice([0.0, 100.0, rng.uniform(0, 1e4)]),
            }
            for n in names:
                ind[n] = None if rng.random() < 0.1 else rng.uniform(1, 200)
            if sym == "BBB":
                ind["volume"] = 100.0  # equal volumes: std is rounding noise -> 0.0
                ind["bb_upper"] = ind["bb_lower"] = ind["bb_middle"] = 100.0  # a flat band
            if sym == "CCC" and i < 45:
                ind["volume"] = 0.0  # nothing traded: the flow over 20 bars is 0 or NaN
            sets.append(ind)
    rng.shuffle(sets)  # symbols interleaved
    sets.sort(key=lambda e: e["ts"])
    got = pipeline.feature_rows(sets)
    states = {}
    want = np.array([states.setdefault(e["symbol"], FeatureState()).update(e) for e in sets])
    assert got.tobytes() == want.tobytes()
    assert np.isnan(want[:, 18]).any() and (want[:, 22] == 0.0).any() and (want[:, 12] == 0.5).any()


# --- a backtest in process -------------------------------------------------------------

import dataclasses  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import psycopg  # noqa: E402
import yaml  # noqa: E402

from ticktape import backtest_kafka, kafka_clients, registry  # noqa: E402
from ticktape.config import REPO_ROOT  # noqa: E402
from ticktape.core import backtest as bt  # noqa: E402
from ticktape.core.execution import ExecConfig  # noqa: E402
from ticktape.core.strategy import StrategyConfig  # noqa: E402
from ticktape.risk_config import DEFAULT_RISK_CONFIG, load_risk_limits  # noqa: E402

# a strategy that trades often on a small model: every test run has orders and fills
TRADING_ENV = {"STRATEGY_ENTER_P": "0.52", "STRATEGY_EXIT_P": "0.51", "STRATEGY_MIN_HOLD_BARS": "1"}
PARTITIONS = kafka_clients.topic_spec("md.ticks").partitions


def make_setup(**strategy) -> bt.Setup:
    cfg = StrategyConfig(**({"enter_p": 0.52, "exit_p": 0.51, "min_hold_bars": 1} | strategy))
    return bt.Setup(
        ("1s", "1m"),
        500_000,
        cfg,
        ExecConfig(),
        load_risk_limits(DEFAULT_RISK_CONFIG),
        yaml.safe_load(DEFAULT_RISK_CONFIG.read_text()),
        1_000_000.0,
        tuple(SYMS),
    )


def flushed(ticks: dict, setup: bt.Setup) -> tuple[dict, int]:
    end = max(t["ts"] for v in ticks.values() for t in v)
    out = {p: list(ticks.get(p, [])) for p in range(PARTITIONS)}
    for f in bt.flush_ticks(end, setup, PARTITIONS):
        out[f["seq"]].append(f)
    return out, end


def encoded(events: bt.Events) -> bytes:
    return bt.canonical(events.by_type)


@pytest.fixture(scope="module")
def trained():
    hist = simulated_bars(SYMS, seed=5, start_us=T0 - 600 * MIN, minutes=480, tick_rate=5.0)
    return train(build_dataset(Bars.from_events(hist), "1m", 5), SHORT, 0.2, TrainParams(rounds=15), "direction")


def test_two_inprocess_backtests_are_byte_identical(model):
    setup = make_setup()
    ticks, end = flushed(sim_by_partition(70), setup)
    a = bt.run(ticks, setup, model)
    b = bt.run(flushed(sim_by_partition(70), setup)[0], setup, model)
    assert encoded(a) == encoded(b)
    ra, rb = bt.summarize(a, setup, T0), bt.summarize(b, setup, T0)
    assert bt.canonical([ra.equity, ra.trades, ra.metrics, ra.counts]) == bt.canonical(
        [rb.equity, rb.trades, rb.metrics, rb.counts]
    )
    assert ra.sha256 == rb.sha256
    assert ra.counts["orders"] >= 5 and ra.counts["fills"] >= 5  # the run trades
    assert ra.counts["fills"] == len(ra.trades) and ra.counts["predictions"] == len(a["prediction"])
    # another parameter, another result
    other = bt.summarize(bt.run(ticks, make_setup(min_hold_bars=4), model), make_setup(min_hold_bars=4), T0)
    assert other.sha256 != ra.sha256


def test_flush_ticks_close_every_window_of_the_period(model):
    setup = make_setup()
    raw = sim_by_partition(12)
    ticks, end = flushed(raw, setup)
    assert [t["ts"] for t in ticks[0][-1:]] == [end + 60_000_000 + 500_000]
    out = bt.run(ticks, setup, model)
    bars = out["bar"]
    assert not [b for b in bars if b["symbol"] == bt.FLUSH_SYMBOL]
    for sym in SYMS:  # the window of each symbol's last trade is closed, in both intervals
        last = max(t["ts"] for v in raw.values() for t in v if t["symbol"] == sym and t["price"] is not None)
        for iv in ("1s", "1m"):
            b = max((b for b in bars if b["symbol"] == sym and b["interval"] == iv), key=lambda b: b["ts"])
            assert b["window_start"] <= last < b["window_end"]
    unflushed = bt.run({p: list(v) for p, v in raw.items()}, setup, model)
    assert len(unflushed["bar"]) < len(bars)  # without them the last windows stay open


def test_equity_curve_trades_and_counts_exactly():
    def eq(ts, equity, n):
        return {
            "event_id": f"eq:{n}",
            "account": "paper",
            "ts": ts,
            "cash": equity,
            "market_value": 0.0,
            "equity": equity,
            "gross_exposure": 0.0,
            "realized_pnl": 0.0,
            "unrealized_pnl": 0.0,
        }

    start = T0 + 30_000_000  # mid-minute: the curve starts at the minute's start
    events = [eq(T0 + MIN, 100.0, 1), eq(T0 + MIN, 110.0, 2), eq(T0 + 2 * MIN, 99.0, 3), eq(T0 + 4 * MIN, 121.0, 4)]
    curve = bt.equity_curve(events, start, 100.0, MIN)
    assert [(r["ts"], r["equity"], r["drawdown"]) for r in curve] == [
        (T0, 100.0, 0.0),
        (T0 + MIN, 110.0, 0.0),
        (T0 + 2 * MIN, 99.0, 1 - 99.0 / 110.0),
        (T0 + 4 * MIN, 121.0, 0.0),
    ]
    fills = [
        {
            "event_id": f"fill:{i}",
            "order_id": f"ord:{i}",
            "account": "paper",
            "symbol": sym,
            "ts": ts,
            "side": "BUY",
            "quantity": 1.0,
            "price": 10.0,
            "commission": 1.0,
            "slippage_bps": 1.0,
        }
        for i, (sym, ts) in enumerate([("B", T0 + 2), ("A", T0 + 2), ("A", T0 + 1)])
    ]
    assert [t["event_id"] for t in bt.trades(fills)] == ["fill:2", "fill:1", "fill:0"]
    assert "account" not in bt.trades(fills)[0]
    rej = {"reason_code": "MAX_ORDER_NOTIONAL"}
    ev = bt.Events(
        {"bar": [{"interval": "1m"}] * 2 + [{"interval": "1s"}], "order_rejected": [rej, rej], "fill": fills},
        late_ticks=3,
    )
    c = bt.counts(ev)
    assert (c["bars"], c["rejections"], c["fills"], c["late_ticks"]) == (
        {"1m": 2, "1s": 1},
        {"MAX_ORDER_NOTIONAL": 2},
        3,
        3,
    )


# --- the command on the real broker and database ----------------------------------------


class Recorded:
    """A period recorded on the live topics of a test namespace, a registry with an
    active model, and the env a `ticktape` process needs to see them."""

    def __init__(self, s, trained, minutes: float, home, symbols=SYMS):
        from sinks import schema
        from test_worker import produce

        self.s = s
        kafka_clients.ensure_topics(s)
        schema.migrate(s)
        ticks = sim_by_partition(minutes, partitions=PARTITIONS, symbols=symbols)
        self.ticks = [t for p in sorted(ticks) for t in ticks[p]]
        placed = produce(s, [(t["symbol"].encode(), bt_serde.encode("tick", t), None) for t in self.ticks])
        assert all(p == partition_for(t["symbol"], PARTITIONS) for t, (p, _) in zip(self.ticks, placed))
        self.start, self.end = T0, max(t["ts"] for t in self.ticks)
        registry.register(s, trained)
        registry.activate(s, trained.metadata["version"])
        self.version = trained.metadata["version"]
        self.env = (
            dict(os.environ)
            | TRADING_ENV
            | {
                "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
                "DATABASE_URL": s.database_url,
                "REDIS_URL": s.redis_url,
                "TOPIC_PREFIX": s.topic_prefix,
                "TICKTAPE_HOME": str(home),
                "SYMBOLS": ",".join(symbols),
                "BAR_INTERVALS": "1s,1m",
                "BAR_GRACE_MS": "500",
                "PYTHONPATH": str(REPO_ROOT),
                "METRICS_PORT": "0",
            }
        )

    def period(self) -> list[str]:
        return ["--from", bt_iso(self.start), "--to", bt_iso(self.end)]

    def cli(self, *args, env=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ticktape.cli", "backtest", *args],
            cwd=REPO_ROOT,
            env=self.env | (env or {}),
            capture_output=True,
            text=True,
            timeout=600,
        )

    def query(self, sql, *params):
        with psycopg.connect(self.s.database_url) as conn:
            return conn.execute(sql, params).fetchall()


from ticktape.serde import Serde  # noqa: E402

bt_serde = Serde()


def bt_iso(us: int) -> str:
    from ticktape.core.trading import iso

    return iso(us)


def run_id_of(stdout: str) -> str:
    found = re.findall(r"^backtest ([0-9a-f]{12}) stored", stdout, re.M)
    assert len(found) == 1, stdout
    return found[0]


@pytest.fixture(scope="module")
def recorded(services, trained, tmp_path_factory):
    from pipeline import module_settings, new_database

    home = tmp_path_factory.mktemp("backtest-home")
    with new_database(services["DATABASE_URL"]) as url:
        s = dataclasses.replace(module_settings(services, home, url), symbols=",".join(SYMS))
        yield Recorded(s, trained, 50, home)


def live_state(s) -> dict:
    """Messages per live topic of the namespace (all read, from the start until 2 s pass
    without one) and rows per live table."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    existing = set(kafka_clients.admin(s).list_topics(timeout=10).topics)
    names = [n for n in kafka_clients.topic_catalog() if s.topic(n) in existing]
    cons = kafka_clients.consumer(s, f"{s.topic_prefix}state.{uuid.uuid4().hex[:6]}")
    cons.assign(
        [
            TopicPartition(s.topic(n), p, OFFSET_BEGINNING)
            for n in names
            for p in range(kafka_clients.topic_spec(n).partitions)
        ]
    )
    topics = dict.fromkeys(names, 0)
    quiet_until = time.monotonic() + 2.0
    try:
        while time.monotonic() < quiet_until:
            for msg in cons.consume(1000, 0.2):
                if msg.error() is None:
                    topics[msg.topic()[len(s.topic_prefix) :]] += 1
                    quiet_until = time.monotonic() + 2.0
    finally:
        cons.close()
    with psycopg.connect(s.database_url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE 'backtest%'"
            )
        ]
        rows = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    return {"topics": topics, "tables": rows}


def bt_topics(s) -> list[str]:
    return sorted(t for t in kafka_clients.admin(s).list_topics(timeout=10).topics if t.startswith("bt."))


def test_backtest_command_stores_reports_repeats_and_never_touches_live_data(recorded, tmp_path):
    before = live_state(recorded.s)
    assert before["topics"]["md.ticks"] == len(recorded.ticks) and before["tables"]["models"] == 1
    report = tmp_path / "out" / "report.html"
    first = recorded.cli(*recorded.period(), "--report", str(report))
    assert first.returncode == 0, first.stderr
    second = recorded.cli(*recorded.period())
    assert second.returncode == 0, second.stderr
    a, b = run_id_of(first.stdout), run_id_of(second.stdout)
    for line in (
        "total return",
        "CAGR",
        "Sharpe",
        "Sortino",
        "max drawdown",
        "win rate",
        "turnover",
        "orders",
        "rejections",
    ):
        assert line in first.stdout

    runs = {
        r[0]: r[1:]
        for r in recorded.query(
            "SELECT run_id, mode, symbols, model_version, data_fingerprint, results_sha256, parameters, counts, "
            "period_start, period_end FROM backtest_runs"
        )
    }
    assert set(runs) == {a, b}
    assert runs[a][:6] == runs[b][:6] and runs[a][0] == "inprocess" and runs[a][2] == recorded.version
    assert runs[a][1] == sorted(SYMS)
    params = runs[a][5]
    assert params["strategy"]["enter_p"] == 0.52 and params["risk_limits"]["accounts"] == {"paper": {}}
    counts = runs[a][6]
    assert counts["orders"] >= 5 and counts["fills"] >= 5 and counts["bars"]["1m"] >= 45 * len(SYMS)
    equity = [
        recorded.query(
            "SELECT ts, equity, cash, market_value, gross_exposure, realized_pnl, "
            "unrealized_pnl, drawdown FROM backtest_equity WHERE run_id = %s ORDER BY ts",
            r,
        )
        for r in (a, b)
    ]
    trades = [
        recorded.query(
            "SELECT event_id, order_id, ts, symbol, side, quantity, price, commission, "
            "slippage_bps FROM backtest_trades WHERE run_id = %s ORDER BY ts, event_id",
            r,
        )
        for r in (a, b)
    ]
    assert equity[0] == equity[1] and len(equity[0]) > 10
    assert trades[0] == trades[1] and len(trades[0]) == counts["fills"]
    assert equity[0][0][1:4] == (1_000_000.0, 1_000_000.0, 0.0)  # the curve starts at the starting cash

    page = report.read_text()  # the report's content: tests/test_report.py
    assert f"report {report}" in first.stdout and f"<title>Backtest {a}</title>" in page
    assert '<div id="chart"></div>' in page and "<script src" not in page and "<link" not in page

    compared = recorded.cli("compare", a[:6], b[:7])  # unique prefixes, as --model takes them
    assert compared.returncode == 0, compared.stderr
    assert "input data: same; parameters: same; equity and trades: identical" in compared.stdout
    assert compared.stdout.splitlines()[0].split() == [a, b]
    listed = recorded.cli("list").stdout.splitlines()
    assert listed[0].split()[:3] == ["run", "created", "(UTC)"]
    ids = [line.split()[0] for line in listed[1:]]
    assert ids.index(b) < ids.index(a)  # the latest first
    shown = recorded.cli("show", a[:8])
    assert shown.returncode == 0 and shown.stdout.startswith(f"backtest {a} (inprocess, created "), shown.stderr
    assert "  parameter strategy.enter_p = 0.52" in shown.stdout.splitlines()

    assert live_state(recorded.s) == before  # not one message or row more in the live namespace
    assert bt_topics(recorded.s) == []


def test_sweep_runs_every_value_in_parallel_and_each_equals_its_single_run(recorded):
    single = recorded.cli(*recorded.period(), env={"STRATEGY_MIN_HOLD_BARS": "3"})
    assert single.returncode == 0, single.stderr
    sweep = recorded.cli(
        *recorded.period(),
        "--sweep",
        "strategy_notional=10000,20000",
        "--sweep",
        "EXEC_SLIPPAGE_BPS=0,5",
        "--jobs",
        "2",
    )
    assert sweep.returncode == 0, sweep.stderr
    rows = re.findall(r"^\s+(\S+)\s+(\S+)\s+([0-9a-f]{12})\s", sweep.stdout, re.M)
    assert [(n, slip) for n, slip, _ in rows] == [
        ("10000.0", "0.0"),
        ("10000.0", "5.0"),
        ("20000.0", "0.0"),
        ("20000.0", "5.0"),
    ]
    stored = {
        r[0]: r[1:]
        for r in recorded.query(
            "SELECT run_id, parameters, results_sha256 FROM backtest_runs WHERE run_id = ANY(%s)", [r[2] for r in rows]
        )
    }
    for notional, slip, run_id in rows:
        params = stored[run_id][0]
        assert (params["strategy"]["notional"], params["execution"]["slippage_bps"]) == (float(notional), float(slip))
    assert len({v[1] for v in stored.values()}) == 4  # four different results
    [(single_sha,)] = recorded.query(
        "SELECT results_sha256 FROM backtest_runs WHERE run_id = %s", run_id_of(single.stdout)
    )
    # hold 3 at the default slippage (1 bps) as a sweep of one value: the single run's result
    again = recorded.cli(*recorded.period(), "--sweep", "EXEC_SLIPPAGE_BPS=1", env={"STRATEGY_MIN_HOLD_BARS": "3"})
    [(_, swept)] = re.findall(r"^\s+(\S+)\s+([0-9a-f]{12})\s", again.stdout, re.M)
    assert recorded.query("SELECT results_sha256 FROM backtest_runs WHERE run_id = %s", swept) == [(single_sha,)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "2024-01-02T15:00", "--to", "2024-01-02T14:00"], "--to is before --from"),
        (["--from", "yesterday", "--to", "2024-01-02T14:00"], "not an ISO-8601 time: 'yesterday'"),
        (
            ["--from", "2024-01-02T14:00", "--to", "2024-01-02T15:00", "--sweep", "BAR_GRACE_MS=1,2"],
            "BAR_GRACE_MS is not a STRATEGY_*, EXEC_* setting or STARTING_CASH",
        ),
        (
            ["--from", "2024-01-02T14:00", "--to", "2024-01-02T15:00", "--sweep", "STRATEGY_ENTER_P=x"],
            "STRATEGY_ENTER_P='x' is not a number",
        ),
        (
            ["--from", "2024-01-02T14:00", "--to", "2024-01-02T15:00", "--sweep", "STRATEGY_ENTER_P=0.4"],
            "STRATEGY_ENTER_P=0.4: must be more than 0.5",
        ),
        (
            [
                "--from",
                "2024-01-02T14:00",
                "--to",
                "2024-01-02T15:00",
                "--sweep",
                "STRATEGY_ENTER_P=0.6",
                "--mode",
                "kafka",
            ],
            "--sweep runs in-process: drop --mode kafka",
        ),
        (["--from", "2024-01-02T14:00", "--to", "2024-01-02T15:00", "--report", "out.pdf"], "expected an .html file"),
        (
            ["--from", "2024-01-02T14:00", "--to", "2024-01-02T15:00", "--config", "/nonexistent/risk.yaml"],
            "risk config /nonexistent/risk.yaml: No such file or directory",
        ),
        (
            ["--from", "2024-01-02T14:00", "--to", "2024-01-02T15:00", "--model", "ffff0000"],
            "no model version ffff0000 in the registry",
        ),
        (
            ["--from", "2030-01-01T00:00", "--to", "2030-01-01T01:00"],
            "no ticks from 2030-01-01T00:00:00.000000Z to 2030-01-01T01:00:00.000000Z in t",
        ),
        (["compare", "only-one"], "expected `backtest compare RUN_A RUN_B`, `backtest list`, `backtest show RUN`"),
        (["show"], "expected `backtest compare RUN_A RUN_B`"),
        (["compare", "nope1", "nope2"], "no backtest run 'nope1'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_store_nothing(recorded, args, message):
    before = recorded.query("SELECT count(*) FROM backtest_runs")
    done = recorded.cli(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ticktape: error: ") and message in lines[0], done.stderr
    assert recorded.query("SELECT count(*) FROM backtest_runs") == before


@pytest.mark.slow
def test_kafka_mode_equals_inprocess_mode_event_for_event(recorded):
    from ticktape.commands.backtest import make_setup as setup_of, read_ticks

    s = dataclasses.replace(
        recorded.s, strategy_enter_p=0.52, strategy_exit_p=0.51, strategy_min_hold_bars=1, bar_intervals="1s,1m"
    )
    setup = setup_of(s, tuple(SYMS), None)
    ticks = read_ticks(s, "topic", recorded.start, recorded.end, None)
    assert sum(map(len, ticks.values())) == len(recorded.ticks)
    for t in bt.flush_ticks(recorded.end, setup, PARTITIONS):
        ticks[t["seq"]].append(t)
    meta, artifact, _ = registry.get(s, recorded.version)
    inproc = bt.run(ticks, setup, Model.load(artifact, meta))
    run_id = uuid.uuid4().hex[:12]
    kafka = backtest_kafka.run(s, run_id, ticks, (meta, artifact))
    assert set(kafka.by_type) >= {"bar", "indicator_set", "prediction", "signal", "order", "fill", "position", "equity"}
    differ = []
    for event_type in sorted(set(kafka.by_type) | set(inproc.by_type)):
        key = lambda e: (e["ts"], e["event_id"])  # noqa: E731  (across partitions only the order differs)
        got, want = sorted(kafka[event_type], key=key), sorted(inproc[event_type], key=key)
        if bt.canonical(got) != bt.canonical(want):
            differ.append(f"{event_type} ({len(got)} events against {len(want)})")
    assert not differ, (
        f"{', '.join(differ)} differ; the risk desk took {kafka.risk_late} events late and released "
        f"{kafka.risk_forced} without waiting"
    )
    assert [e["event_id"] for e in kafka["equity"]] == [e["event_id"] for e in inproc["equity"]]
    assert (kafka.late_ticks, kafka.invalid_ticks, kafka.skipped_predictions) == (
        inproc.late_ticks,
        inproc.invalid_ticks,
        inproc.skipped_predictions,
    )
    assert bt.summarize(kafka, setup, recorded.start).sha256 == bt.summarize(inproc, setup, recorded.start).sha256
    assert len(inproc["fill"]) >= 5
    assert backtest_kafka.namespace_topics(s, run_id) == []  # the namespace is gone


@pytest.mark.slow
def test_backtest_equals_the_live_pipeline_over_its_period(services, trained, fresh_db, tmp_path, monkeypatch):
    from pipeline import SYMBOLS, Pipeline
    from test_worker import flush_items, produce

    from ticktape.config import settings as make_settings
    from ticktape.stack import free_port

    symbols = SYMBOLS.split(",")  # the live pipeline's universe
    for k, v in (TRADING_ENV | {"SYMBOLS": SYMBOLS}).items():
        monkeypatch.setenv(k, v)
    s = make_settings(
        kafka_bootstrap_servers=services["KAFKA_BOOTSTRAP_SERVERS"],
        database_url=fresh_db,
        redis_url=services["REDIS_URL"],
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        home=str(tmp_path),
        metrics_port=free_port(),
    )
    rec = Recorded(s, trained, 40, tmp_path / "bt-home", symbols)
    last = max(t["ts"] for t in rec.ticks)
    produce(s, flush_items(last + 3600 * 10**6))  # the live run's own end: every window closes
    pipe = Pipeline(s, ["worker"], tmp_path)
    try:
        reader = backtest_kafka.Reader(s)
        settler = backtest_kafka.Settler(s, reader, pipe.ports["worker"], {"md.ticks": len(rec.ticks) + PARTITIONS})
        deadline = time.monotonic() + 300
        while not settler.settled():  # the live run has processed everything, as in kafka mode
            reader.poll(0.3)
            assert time.monotonic() < deadline and pipe.procs["worker"].poll() is None
        settler.close()
        reader.close()
        done = rec.cli("--check-live")  # the whole recording
        assert done.returncode == 0, done.stdout + done.stderr
        assert "live check: every event equals the live pipeline's" in done.stdout
        seen = {
            m[0]: (int(m[1]), int(m[2]))
            for m in re.findall(r"^\s+(\w+)\s+live\s+(\d+)\s+backtest\s+(\d+)\s+equal$", done.stdout, re.M)
        }
        for event_type in ("bar", "indicator_set", "prediction", "signal", "order", "fill", "position", "equity"):
            assert seen[event_type][0] == seen[event_type][1] > 0, (event_type, done.stdout)
        # a check that can fail: other parameters, other orders than live
        other = rec.cli(*rec.period(), "--check-live", env={"STRATEGY_NOTIONAL": "20000"})
        assert other.returncode == 1 and "event type(s) differ" in other.stdout, other.stdout + other.stderr
        assert re.search(r"^\s+bar\s+live\s+(\d+)\s+backtest\s+\1\s+equal$", other.stdout, re.M)
    finally:
        pipe.stop()

"""ticktape.api.Indicator: a user indicator defined in this file, loaded by INDICATORS,
flows into the indicator sets (IndicatorSet v2 ``extra``), the features, a trained
model that records it and the predictions that model makes, event by event as the
stages run and in a backtest; the built-in 20 are one class on the same base."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import numpy as np
import pandas
import pytest
from fastavro import schemaless_writer

import ticktape.backtest
from producers.replay import read_csv
from ticktape import cli, registry
from ticktape.api import Bar, Indicator, IndicatorError, IndicatorSpec, Strategy, Target, load_indicators
from ticktape.cli import UsageError
from ticktape.commands.train import report
from ticktape.config import REPO_ROOT, ConfigError
from ticktape.config import settings as make_settings
from ticktape.core import pipeline
from ticktape.core.features import FEATURE_NAMES, Bars, FeatureState, build_dataset
from ticktape.core.indicators import INDICATOR_NAMES, SymbolIndicators, indicator_event, user_values
from ticktape.core.ml import Model, ModelMismatch, TrainParams, train
from ticktape.core.simbars import simulated_bars
from ticktape.serde import SINGLE_OBJECT_MAGIC, Serde, catalog

GOOG = REPO_ROOT / "tests" / "data" / "GOOG_daily.csv"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00Z
MINUTE = 60_000_000
FEATURES = ["range_5", "range_trend", "rsi_14", "ret_1", "ret_5", "bb_pos", "volume_z_20"]


class Range5(Indicator):
    """The mean of (high - low) / close over the last 5 bars."""

    name = "range_5"
    state_fields = ("window",)

    def __init__(self):
        self.window: list[float] = []

    def update(self, bar):
        self.window = (self.window + [(bar["high"] - bar["low"]) / bar["close"]])[-5:]

    @property
    def ready(self) -> bool:
        return len(self.window) == 5

    @property
    def value(self) -> float:
        return sum(self.window) / 5


class RangeTrend(Indicator):
    """Two outputs: this bar's range and its change since the previous bar."""

    name = "range_trend_set"
    outputs = ("range_now", "range_trend")
    state_fields = ("last", "change")

    def __init__(self):
        self.last: float | None = None
        self.change: float | None = None

    def update(self, bar):
        now = (bar["high"] - bar["low"]) / bar["close"]
        self.change = None if self.last is None else now - self.last
        self.last = now

    @property
    def ready(self) -> bool:
        return self.change is not None

    def values(self):
        return {"range_now": self.last, "range_trend": self.change}


INDICATORS = "test_user_indicators:Range5, test_user_indicators:RangeTrend"


@pytest.fixture(scope="module")
def bars() -> list[dict]:
    _, rows = read_csv(str(GOOG), None, "GOOG")
    return rows


@pytest.fixture(scope="module")
def specs() -> tuple[IndicatorSpec, ...]:
    return load_indicators(make_settings(indicators=INDICATORS))


def test_indicators_are_loaded_by_name_and_recorded(specs):
    assert [s.cls for s in specs] == [Range5, RangeTrend]
    assert specs[1].record() == {
        "class": "test_user_indicators:RangeTrend",
        "outputs": ["range_now", "range_trend"],
        "source_sha256": specs[0].source_sha256,  # one file
    }
    assert len(specs[0].source_sha256) == 64
    assert load_indicators(make_settings(indicators="")) == ()


def test_streamed_indicators_equal_the_batch_path_and_resume_exactly(bars, specs):
    classes = [s.cls for s in specs]
    sets = pipeline.indicator_sets(bars, indicators=classes)  # the backtest's batch path
    expected = [(b["high"] - b["low"]) / b["close"] for b in bars[:5]]
    assert sets[0]["extra"] == {"range_5": None, "range_now": expected[0], "range_trend": None}
    assert sets[3]["extra"]["range_5"] is None
    assert sets[4]["extra"]["range_5"] == sum(expected) / 5
    assert sets[1]["extra"]["range_trend"] == expected[1] - expected[0]

    # the stage's way: one SymbolIndicators, its state saved as JSON and resumed half way
    st = SymbolIndicators("1d", classes)
    streamed = []
    for i, bar in enumerate(bars):
        if i == 1000:
            st = SymbolIndicators.from_state(json.loads(json.dumps(st.to_state())), classes)
        values, extra = st.update(bar)
        streamed.append({"values": values, "extra": extra})
    assert [s["extra"] for s in streamed] == [ev["extra"] for ev in sets]
    assert [s["values"] for s in streamed] == [{k: ev[k] for k in INDICATOR_NAMES} for ev in sets]
    assert st.update(bars[-1]) is None  # redelivered: nothing folded
    assert st.to_state()["user"]["range_5"]["window"] == [(b["high"] - b["low"]) / b["close"] for b in bars[-5:]]


def test_the_builtin_20_on_the_base_are_the_engines_values(bars):
    st = SymbolIndicators("1d")
    for bar in bars[:300]:
        values, extra = st.update(bar)
    assert extra == {} and st.talib.ready and list(values) == list(INDICATOR_NAMES)
    assert st.talib.output_names() == INDICATOR_NAMES
    assert values == {k: pipeline.indicator_sets(bars[:300])[-1][k] for k in INDICATOR_NAMES}


class Clash(Range5):
    name = "rsi_14"


class FeatureClash(Range5):
    name = "ret_1"


class NoJsonState(Range5):
    name = "no_json"

    def to_dict(self):
        return {"window": (1.0, 2.0)}


class NeedsArgs(Range5):
    name = "needs_args"

    def __init__(self, n):
        super().__init__()


class SameName(Range5):
    name = "range_trend_set"  # RangeTrend's: its outputs differ, its state would not


class NotAnIndicator:
    pass


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("test_user_indicators", "expected package.module:Class (e.g. mypkg.indicators:Range)"),
        ("no_such_module:X", "no module no_such_module"),
        ("test_user_indicators:NotAnIndicator", "NotAnIndicator is not a subclass of ticktape.api.Indicator"),
        ("test_user_indicators:Clash", "output(s) ['rsi_14'] repeat a built-in or another indicator"),
        ("test_user_indicators:FeatureClash", "output(s) ['ret_1'] repeat a built-in"),
        ("test_user_indicators:Range5,test_user_indicators:Range5", "output(s) ['range_5'] repeat"),
        (
            "test_user_indicators:RangeTrend,test_user_indicators:SameName",
            "another indicator is named 'range_trend_set'",
        ),
        ("test_user_indicators:NoJsonState", "state does not survive a JSON round trip"),
        ("test_user_indicators:NeedsArgs", "NeedsArgs() failed: TypeError"),
    ],
)
def test_bad_indicators_are_refused_in_one_line(value, message):
    with pytest.raises(ConfigError, match=f"^INDICATORS='?{re.escape(value.split(',')[-1])}") as e:
        load_indicators(make_settings(indicators=value))
    assert message in str(e.value) and "\n" not in str(e.value)


class Broken(Range5):
    name = "broken"

    def update(self, bar):
        if bar["close"] > 110:
            raise ZeroDivisionError("division by zero")
        super().update(bar)


class NotFinite(Range5):
    name = "not_finite"

    @property
    def value(self) -> float:
        return float("nan")


class Unbounded(Range5):
    name = "unbounded"

    def update(self, bar):
        self.window.extend([bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"]])  # never trimmed


def test_a_defective_indicator_stops_with_its_name(bars):
    st = SymbolIndicators("1d", [Broken])
    with pytest.raises(IndicatorError, match=r"^indicator Broken failed on GOOG at \d+: ZeroDivisionError"):
        for bar in bars:
            st.update(bar)
    with pytest.raises(IndicatorError, match=r"^indicator NotFinite: not_finite = nan is not a finite number"):
        user_values(bars[:5], [NotFinite])
    st = SymbolIndicators("1d", [Unbounded])
    for bar in bars[:2000]:
        st.update(bar)
    with pytest.raises(IndicatorError, match=r"^indicator Unbounded: state is \d+ bytes of JSON, over 65536"):
        st.to_state()


def test_indicator_set_v2_carries_extra_and_reads_v1():
    serde = Serde()
    event = {"event_id": "A:1m:0", "symbol": "A", "interval": "1m", "ts": 60_000_000, "close": 10.0, "volume": 5.0}
    event |= dict.fromkeys(INDICATOR_NAMES) | {"extra": {"range_5": 0.25, "range_trend": None}}
    assert serde.decode(serde.encode("indicator_set", event)) == ("indicator_set", event)
    v1 = catalog().versions["indicator_set"][0]
    assert v1.path.name == "indicator_set.v1.avsc"
    buf = io.BytesIO()
    schemaless_writer(buf, v1.parsed, {k: v for k, v in event.items() if k != "extra"})
    written_by_v1 = SINGLE_OBJECT_MAGIC + v1.fingerprint + buf.getvalue()
    assert serde.decode(written_by_v1) == ("indicator_set", event | {"extra": {}})


@pytest.fixture(scope="module")
def trained(bars, specs):
    ds = build_dataset(Bars.from_events(bars), "1d", 5, indicators=[s.cls for s in specs])
    return ds, train(ds, FEATURES, 0.2, TrainParams(rounds=30), "direction", "csv:GOOG", specs)


def test_features_and_the_model_record_the_user_indicators(bars, specs, trained):
    ds, t = trained
    assert ds.names == FEATURE_NAMES + ("range_5", "range_now", "range_trend")
    sets = pipeline.indicator_sets(bars, indicators=[s.cls for s in specs])
    col = ds.names.index("range_5")
    by_ts = {int(ts): row for ts, row in zip(ds.ts, ds.X)}
    assert [by_ts[ev["ts"]][col] for ev in sets[4:]] == [ev["extra"]["range_5"] for ev in sets[4:]]
    assert np.isnan(by_ts[sets[3]["ts"]][col])

    meta = t.metadata
    assert meta["features"] == FEATURES
    assert meta["indicators"] == [specs[0].record(), specs[1].record()]  # both have a feature in the model
    assert {i["feature"] for i in meta["importance"] if i["gain_share"] > 0} >= {"range_5", "range_trend"}
    lines = report(meta).splitlines()
    assert lines[5] == f"indicator test_user_indicators:Range5 (range_5; source {specs[0].source_sha256[:12]})"
    assert lines[6].startswith("          test_user_indicators:RangeTrend (range_now, range_trend; source ")
    only_builtin = train(ds, ["rsi_14", "ret_1"], 0.2, TrainParams(rounds=5), "direction", "", specs)
    assert only_builtin.metadata["indicators"] == []


def test_a_model_on_user_indicators_needs_them_configured_unchanged(specs, trained):
    _, t = trained
    with pytest.raises(ModelMismatch, match="trained on user indicator test_user_indicators:Range5, which INDICATORS"):
        Model.load(t.artifact, t.metadata)
    changed = (specs[0], dataclasses.replace(specs[1], source_sha256="0" * 64))
    with pytest.raises(ModelMismatch, match="user indicator test_user_indicators:RangeTrend changed since training"):
        Model.load(t.artifact, t.metadata, changed)
    assert Model.load(t.artifact, t.metadata, specs).extra == ("range_5", "range_trend")
    unrecorded = t.metadata | {"indicators": [specs[0].record()]}  # range_trend: whose is it?
    with pytest.raises(ModelMismatch, match=r"does not produce feature\(s\) range_trend \(it produces sma_10_rel"):
        Model.load(t.artifact, unrecorded, specs)


def test_predictions_score_exactly_what_the_model_was_trained_on(bars, specs, trained):
    ds, t = trained
    model = Model.load(t.artifact, t.metadata, specs)
    classes = [s.cls for s in specs]
    out = pipeline.from_bars(bars, ["1d"], model, classes)  # the backtest's batch path
    preds = out.predictions
    cols = [ds.names.index(f) for f in FEATURES]
    rows = {int(ts): row[cols] for ts, row in zip(ds.ts, ds.X)}
    complete = [ts for ts, row in rows.items() if not np.isnan(row).any()]
    assert [p["ts"] for p in preds] == complete and out.skipped_predictions == len(bars) - len(complete)
    X = np.array([rows[p["ts"]] for p in preds])
    assert [list(p["features"].values()) for p in preds] == X.tolist()
    assert [p["p_up"] for p in preds] == model.score(X).tolist()

    # the stages' way, event by event: indicators stage → IndicatorSet bytes → predict stage
    serde = Serde()
    ind_state, feat_state, live = SymbolIndicators("1d", classes), FeatureState(), []
    for bar in bars:
        folded = ind_state.update(bar)
        assert folded is not None
        kind, ind = serde.decode(serde.encode("indicator_set", indicator_event(bar, *folded)))
        scored, _, _ = model.predictions([(ind, feat_state.update(ind))])
        live.extend(scored)
    assert live == preds


def test_a_backtest_of_a_user_indicator_model(bars, specs, trained, tmp_path):
    _, t = trained
    model_dir = registry.save_files(make_settings(home=str(tmp_path)), t)
    df = pandas.read_csv(GOOG)
    common = {"symbols": "GOOG", "model": str(model_dir), "DATABASE_URL": "", "TICKTAPE_HOME": str(tmp_path)}
    result = ticktape.backtest.run(df, INDICATORS=INDICATORS, STRATEGY_ENTER_P="0.52", STRATEGY_EXIT_P="0.51", **common)
    model = Model.load(t.artifact, t.metadata, specs)
    expected = pipeline.from_bars(bars, ["1d"], model, [s.cls for s in specs])
    assert result.events["prediction"] == expected.predictions
    assert [ev["extra"] for ev in result.events["indicator_set"]] == [ev["extra"] for ev in expected.indicators]
    assert result.counts["fills"] > 0
    with pytest.raises(UsageError, match="which INDICATORS does not name"):
        ticktape.backtest.run(df, **common)


class WideRangeFlat(Strategy):
    """Long 10 while the 5-bar range is under 3 % of the close, flat otherwise: trades
    on a user indicator (``bar.indicators["range_5"]``), no model."""

    name = "wide_range_flat"

    def on_bar(self, bar: Bar) -> Target | None:
        r = bar.indicators["range_5"]
        return None if r is None else Target(10.0 if r < 0.03 else 0.0, f"range_5 {r:.4f}")


def test_a_strategy_trades_on_a_user_indicator_in_a_backtest(bars, tmp_path):
    df = pandas.read_csv(GOOG)
    result = ticktape.backtest.run(
        df,
        symbols="GOOG",
        strategy=WideRangeFlat,
        INDICATORS="test_user_indicators:Range5",
        DATABASE_URL="",
        TICKTAPE_HOME=str(tmp_path),
    )
    sets = pipeline.indicator_sets(bars, indicators=[Range5])
    wanted, target = [], 0.0
    for ev in sets:  # the targets the hook sets, from the user indicator alone
        r = ev["extra"]["range_5"]
        if r is not None and (10.0 if r < 0.03 else 0.0) != target:
            target = 10.0 if r < 0.03 else 0.0
            wanted.append((ev["ts"], target, f"range_5 {r:.4f}"))
    assert len(wanted) > 20
    assert [(s["ts"], s["target_position"], s["reason"]) for s in result.events["signal"]] == wanted
    assert result.parameters["indicators"] == [
        load_indicators(make_settings(indicators="test_user_indicators:Range5"))[0].record()
    ]


def test_train_refuses_unknown_features_in_one_line(capsys, monkeypatch):
    monkeypatch.setenv("INDICATORS", "test_user_indicators:Range5")
    code = cli.main(["train", "--source", "csv", "--input", "x.csv", "--features", "range_5,nope"])
    err = capsys.readouterr().err
    assert code == 2 and "--features: unknown feature(s) nope; the features are sma_10_rel," in err
    assert "volume_z_20, range_5 (user indicators' outputs come from INDICATORS)" in err
    assert cli.main(["train", "--source", "csv", "--input", "x.csv", "--features", "ret_1,ret_1"]) == 2
    assert "--features names a feature twice: ret_1,ret_1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_user_indicator_live_in_the_worker(settings, fresh_db, tmp_path):
    """The real worker with INDICATORS: bars on md.bars.1m → IndicatorSets with the user
    outputs → predictions of a model trained on them, equal to the in-process chain;
    a restart half way resumes the user indicators' state from the changelog."""
    from test_predict_agent import predictions
    from test_worker import Worker, read

    from ticktape import kafka_clients

    s = dataclasses.replace(settings, database_url=fresh_db, indicators=INDICATORS)
    kafka_clients.ensure_topics(s)
    specs = load_indicators(s)
    classes = [spec.cls for spec in specs]
    history = simulated_bars(["AAA", "BBB", "CCC"], seed=11, start_us=T0, minutes=420, tick_rate=3.0)
    ds = build_dataset(Bars.from_events(history), "1m", 5, indicators=classes)
    t = train(ds, FEATURES, 0.2, TrainParams(rounds=20), "direction", "sim", specs)
    registry.register(s, t)
    registry.activate(s, t.version)  # announced before the worker starts

    live = simulated_bars(["AAA", "BBB", "CCC"], seed=5, start_us=T0 + 1440 * MINUTE, minutes=90, tick_rate=3.0)
    want = pipeline.from_bars(live, ["1m"], Model.load(t.artifact, t.metadata, specs), classes)
    assert len(want.predictions) > 200
    halves = [live[: len(live) // 2], live[len(live) // 2 :]]
    env = {"DATABASE_URL": fresh_db, "INDICATORS": INDICATORS, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'tests'}"}
    serde = Serde()
    worker = Worker(s, tmp_path / "worker.log", **env)
    try:
        first = pipeline.from_bars(halves[0], ["1m"], Model.load(t.artifact, t.metadata, specs), classes)
        for n, half in enumerate(halves):
            if n == 1:  # restarted once the first half is scored: the user indicators resume from the changelog
                assert len(predictions(s, len(first.predictions))) == len(first.predictions), worker.log_tail()
                assert worker.stop() == 0, worker.log_tail()
                worker = Worker(s, tmp_path / "worker2.log", **env)
            prod = kafka_clients.producer(s)
            for bar in half:
                prod.produce(s.topic("md.bars.1m"), key=bar["symbol"].encode(), value=serde.encode("bar", bar))
            assert prod.flush(30) == 0
        got = predictions(s, len(want.predictions))
        assert got == {p["event_id"]: p for p in want.predictions}, worker.log_tail()
        sets = {
            ind["event_id"]: ind["extra"]
            for msgs in read(s, "analytics.indicators", len(live), quiet=0.5).values()
            for ind in (serde.decode(m.value())[1] for m in msgs)
        }
        assert sets == {ev["event_id"]: ev["extra"] for ev in want.indicators}
    finally:
        rc = worker.stop()
    assert rc == 0, worker.log_tail()


def test_the_indicators_command_writes_the_user_outputs(bars, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("INDICATORS", INDICATORS)
    src, out = tmp_path / "bars.csv", tmp_path / "out.csv"
    some = bars[:300]
    src.write_text(
        "time,symbol,open,high,low,close,volume\n"
        + "".join(
            f"{pandas.Timestamp(b['window_start'], unit='us').isoformat()},GOOG,{b['open']!r},{b['high']!r},"
            f"{b['low']!r},{b['close']!r},{b['volume']!r}\n"
            for b in some
        )
    )
    assert cli.main(["indicators", "--input", str(src), "--output", str(out), "--interval", "1d"]) == 0
    assert "the 7 input columns + 23 indicator columns" in capsys.readouterr().out
    header, *rows = out.read_text().splitlines()
    assert header.split(",")[7:] == [*INDICATOR_NAMES, "range_5", "range_now", "range_trend"]
    expected = user_values(some, [Range5, RangeTrend])
    assert [row.split(",")[-3:] for row in rows] == [
        ["" if v is None else repr(v) for v in e.values()] for e in expected
    ]


def test_a_live_run_records_its_user_indicators(specs, tmp_path):
    from ticktape.commands.status import RUN_FILE, write_run_files

    write_run_files(tmp_path, [("worker", 9101, 42)], {"class": "x:Y"}, [s.record() for s in specs])
    doc = json.loads((tmp_path / RUN_FILE).read_text())
    assert doc["indicators"] == [specs[0].record(), specs[1].record()] and doc["strategy"] == {"class": "x:Y"}


def test_train_cli_records_the_feature_list_and_activation_needs_the_indicators(
    settings, fresh_db, bars, specs, tmp_path, monkeypatch, capsys
):
    from test_train import write_csv

    s = dataclasses.replace(settings, database_url=fresh_db)
    for k, v in {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "DATABASE_URL": fresh_db,
        "TOPIC_PREFIX": s.topic_prefix,
        "TICKTAPE_HOME": s.home,
        "INDICATORS": INDICATORS,
    }.items():
        monkeypatch.setenv(k, v)
    path = write_csv(tmp_path / "goog.csv", bars)
    argv = ["train", "--source", "csv", "--input", str(path), "--interval", "1d", "--rounds", "30"]
    assert cli.main([*argv, "--features", ",".join(FEATURES)]) == 0
    out = capsys.readouterr().out
    version = out.split("model     direction ")[1].split()[0]
    assert "features  7 (ticktape-features-1)" in out and "indicator test_user_indicators:Range5 (range_5;" in out
    meta = registry.get(s, version)[0]
    assert meta["features"] == FEATURES and meta["indicators"] == [spec.record() for spec in specs]
    # the same data and list in process: the same model, byte for byte
    ds = build_dataset(Bars.from_events(bars), "1d", 5, indicators=[spec.cls for spec in specs])
    assert train(ds, FEATURES, 0.2, TrainParams(rounds=30), "direction", f"csv:{path}", specs).version == version

    monkeypatch.setenv("INDICATORS", "test_user_indicators:Range5")  # RangeTrend gone: refused, nothing active
    assert cli.main(["models", "activate", version]) == 2
    assert "trained on user indicator test_user_indicators:RangeTrend, which INDICATORS does not name" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("INDICATORS", INDICATORS)
    assert cli.main(["models", "activate", version]) == 0

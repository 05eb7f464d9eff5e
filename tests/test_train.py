"""Training and the model registry: reproducible artifacts, a planted signal is learnt,
mismatching models are refused, and `ticktape train` / `ticktape models` on the real
database and broker (bars from a CSV, the database and a topic)."""

from __future__ import annotations

import csv
import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from ticktape import cli, kafka_clients, registry
from ticktape.core.features import FEATURE_NAMES, FEATURE_SET, Bars, build_dataset
from ticktape.core.ml import Model, ModelMismatch, TrainParams, auc, train
from ticktape.core.simbars import simulated_bars
from ticktape.serde import Serde

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00Z
MINUTE = 60_000_000
QUICK = TrainParams(rounds=20)


@pytest.fixture(scope="module")
def sim():
    return simulated_bars(["AAA", "BBB", "CCC"], seed=11, start_us=T0, minutes=420, tick_rate=3.0)


@pytest.fixture(scope="module")
def dataset(sim):
    return build_dataset(Bars.from_events(sim), "1m", 5)


def test_training_is_reproducible(sim, dataset):
    a = train(dataset, FEATURE_NAMES, 0.2, QUICK, "direction", "sim")
    again = build_dataset(Bars.from_events(list(reversed(sim))), "1m", 5)  # input order does not matter
    b = train(again, FEATURE_NAMES, 0.2, QUICK, "direction", "sim")
    assert a.artifact == b.artifact and len(a.artifact) > 1000
    assert registry.metadata_json(a.metadata) == registry.metadata_json(b.metadata)
    assert a.version == b.version and len(a.version) == 12
    ma, mb = Model.load(a.artifact, a.metadata), Model.load(b.artifact, b.metadata)
    X = dataset.X[~np.isnan(dataset.X).any(axis=1)]
    assert np.array_equal(ma.score(X), mb.score(X))
    threaded = train(dataset, FEATURE_NAMES, 0.2, dataclasses.replace(QUICK, threads=2), "direction", "sim")
    assert threaded.artifact == a.artifact  # the thread count does not change the model
    other = train(dataset, FEATURE_NAMES, 0.2, dataclasses.replace(QUICK, seed=43), "direction", "sim")
    assert other.artifact != a.artifact and other.version != a.version


def test_report_numbers(dataset):
    t = train(dataset, FEATURE_NAMES, 0.2, QUICK, "direction", "sim")
    rows, m = t.metadata["rows"], t.metadata["metrics"]
    assert rows["bars"] == len(dataset.ts) and rows["symbols"] == 3
    assert rows["missing_features"] == 3 * 199  # sma_200's lookback, per symbol
    assert rows["unlabelled"] == 3 * 5
    assert rows["train"] + rows["holdout"] + rows["purged"] == rows["bars"] - 3 * 199 - 3 * 5
    assert m["baseline"]["auc"] == 0.5
    assert len(t.holdout_p) == rows["holdout"]
    assert [i["feature"] for i in t.metadata["importance"]][0] in FEATURE_NAMES
    assert abs(sum(i["gain_share"] for i in t.metadata["importance"]) - 1.0) < 1e-9
    assert t.metadata["feature_set"] == FEATURE_SET and t.metadata["features"] == list(FEATURE_NAMES)
    short = train(dataset, [f for f in FEATURE_NAMES if f not in ("sma_200_rel", "sma_50_rel")], 0.2, QUICK, "d")
    assert short.metadata["rows"]["missing_features"] == 3 * 33  # MACD's lookback now


def _mean_reverting_bars(symbols=("MR1", "MR2"), n=900, seed=3):
    """Returns that reverse: r_t = -0.6 r_(t-1) + noise, so ret_1 predicts the next bar."""
    rng = np.random.default_rng(seed)
    bars = []
    for sym in symbols:
        r = np.zeros(n)
        for t in range(1, n):
            r[t] = -0.6 * r[t - 1] + rng.normal(0, 0.002)
        close = 100.0 * np.exp(np.cumsum(r))
        for t in range(n):
            c = float(close[t])
            bars.append(
                {
                    "symbol": sym,
                    "window_start": T0 + t * MINUTE,
                    "open": c,
                    "high": c * 1.001,
                    "low": c * 0.999,
                    "close": c,
                    "volume": float(rng.uniform(100, 1000)),
                    "vwap": c,
                }
            )
    return Bars.from_events(bars)


def test_a_planted_signal_is_learnt():
    ds = build_dataset(_mean_reverting_bars(), "1m", 1)
    t = train(ds, FEATURE_NAMES, 0.25, TrainParams(rounds=60), "mr")
    m = t.metadata["metrics"]
    assert m["holdout"]["auc"] > 0.65 > m["baseline"]["auc"]
    assert m["holdout"]["log_loss"] < m["baseline"]["log_loss"]
    assert t.metadata["importance"][0]["feature"] in ("ret_1", "momentum_5_rel", "rsi_5", "ret_5")


def test_auc_by_hand():
    y = np.array([0.0, 0.0, 1.0, 1.0])
    assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert auc(np.ones(3), np.array([0.1, 0.2, 0.3])) is None


def test_mismatching_models_are_refused(dataset):
    t = train(dataset, FEATURE_NAMES, 0.2, QUICK, "direction")
    Model.load(t.artifact, t.metadata)
    cases = {
        "definitions": t.metadata | {"feature_set": "ticktape-features-0"},
        "does not produce": t.metadata | {"features": [*FEATURE_NAMES[:-1], "rsi_7"]},
        "differ from its metadata": t.metadata | {"features": list(reversed(FEATURE_NAMES))},
        "sha256": t.metadata | {"artifact": {"sha256": "0" * 64}},
        "horizon": t.metadata | {"horizon": 0},
    }
    for needle, meta in cases.items():
        with pytest.raises(ModelMismatch, match=needle) as e:
            Model.load(t.artifact, meta)
        assert str(e.value).startswith(f"model direction {t.version} refused: ")
        assert "\n" not in str(e.value)


def test_predictions_skip_missing_features_and_batches_equal_single_rows(dataset):
    t = train(dataset, FEATURE_NAMES, 0.2, QUICK, "direction")
    model = Model.load(t.artifact, t.metadata)
    items = [
        (
            {
                "event_id": f"{s}:1m:{ts}",
                "symbol": s,
                "interval": "1m",
                "ts": int(ts),
                "close": 100.0,
                "volatility_20": 0.2,
            },
            list(x),
        )
        for s, ts, x in zip(dataset.symbols, dataset.ts, dataset.X)
    ]
    preds, missing, seconds = model.predictions(items)
    assert missing == 3 * 199 and len(preds) == len(items) - missing and seconds > 0
    singles = [p for item in items for p in model.predictions([item])[0]]
    assert preds == singles  # same p_up bit for bit, one row or many
    first = preds[0]
    assert first["event_id"] == f"{first['symbol']}:1m:{first['ts']}:direction:{t.version}"
    assert list(first["features"]) == list(FEATURE_NAMES) and 0.0 < first["p_up"] < 1.0
    assert (first["model_name"], first["model_version"], first["horizon"]) == ("direction", t.version, 5)


# --- the command line on the real database and broker ------------------------------------------
def write_csv(path: Path, bars) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "symbol", "open", "high", "low", "close", "volume"])
        for b in bars:
            t = datetime.fromtimestamp(b["window_start"] / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            w.writerow(
                [t, b["symbol"], repr(b["open"]), repr(b["high"]), repr(b["low"]), repr(b["close"]), repr(b["volume"])]
            )
    return path


@pytest.fixture
def env(settings, fresh_db, monkeypatch):
    s = dataclasses.replace(settings, database_url=fresh_db)
    for k, v in {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "DATABASE_URL": fresh_db,
        "TOPIC_PREFIX": s.topic_prefix,
        "TICKTAPE_HOME": s.home,
    }.items():
        monkeypatch.setenv(k, v)
    return s


def announcements(s, count: int, timeout: float = 20.0) -> list[tuple[bytes, dict]]:
    """The first ``count`` messages of ml.models, then 1.5 s more so that extras would show."""
    import time

    cons = kafka_clients.consumer(s, f"{s.topic_prefix}reader")
    cons.assign([TopicPartition(s.topic("ml.models"), 0, OFFSET_BEGINNING)])
    out = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            if len(out) >= count:
                quiet_until = quiet_until or time.monotonic() + 1.5
                if time.monotonic() >= quiet_until:
                    break
            msg = cons.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append((msg.key(), registry.parse_announcement(msg.value())[0]))
    finally:
        cons.close()
    return out


def active_versions(s) -> list[str]:
    with psycopg.connect(s.database_url) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM models WHERE active")]


def test_train_cli_registers_and_activates(env, sim, tmp_path, capsys):
    path = write_csv(tmp_path / "bars.csv", sim)
    argv = ["train", "--source", "csv", "--input", str(path), "--rounds", "20"]
    assert cli.main(argv + ["--activate"]) == 0
    out = capsys.readouterr().out
    assert "holdout" in out and "baseline" in out and "importance (gain share)" in out
    with psycopg.connect(env.database_url) as conn:
        ((name, version, meta, artifact),) = conn.execute(
            "SELECT name, version, metadata, artifact FROM models"
        ).fetchall()
    assert f"active    direction {version}" in out
    files = Path(env.home) / "models" / "direction" / version
    assert (files / "model.ubj").read_bytes() == bytes(artifact)
    assert json.loads((files / "metadata.json").read_text()) == meta
    assert meta["data"]["source"] == f"csv:{path}" and meta["interval"] == "1m" and meta["horizon"] == 5
    assert active_versions(env) == [version]
    ((key, announced),) = announcements(env, 1)
    assert key == b"active" and announced == meta

    assert cli.main(argv) == 0  # same data, same seed: the same version, registered once
    assert f"direction {version} already registered" in capsys.readouterr().out
    assert cli.main(argv + ["--seed", "7", "--name", "other"]) == 0
    other = capsys.readouterr().out.split("model     other ")[1].split()[0]
    assert active_versions(env) == [version]

    assert cli.main(["models", "activate", other[:6]]) == 0
    assert capsys.readouterr().out.startswith(f"active other {other}")
    assert active_versions(env) == [other]
    assert [m["version"] for _, m in announcements(env, 2)] == [version, other]
    assert cli.main(["models", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in listing[1:]] == [["direction", version, "1m"], ["*", "other", other]]
    assert cli.main(["models", "show", version]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == meta | {"active": False}


def test_activation_refuses_a_mismatching_model(env, dataset, capsys):
    good = train(dataset, FEATURE_NAMES, 0.2, QUICK, "direction")
    registry.register(env, good)
    registry.activate(env, good.version)
    bad_meta = good.metadata | {"version": "badbadbad000", "features": [*FEATURE_NAMES[:-1], "rsi_7"]}
    registry.register(env, dataclasses.replace(good, metadata=bad_meta))
    assert cli.main(["models", "activate", "badbad"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model direction badbadbad000 refused" in err and "rsi_7" in err
    assert active_versions(env) == [good.version]  # nothing changed
    assert [m["version"] for _, m in announcements(env, 1)] == [good.version]  # nothing announced


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--source", "csv"], "--input FILE goes with --source csv"),
        (["--source", "db", "--input", "x.csv"], "--input FILE goes with --source csv"),
        (["--source", "csv", "--input", "x.csv", "--interval", "1x"], "bad interval '1x'"),
        (["--source", "csv", "--input", "x.csv", "--horizon", "0"], "--horizon must be at least 1"),
        (["--source", "csv", "--input", "x.csv", "--holdout", "1"], "--holdout must be between 0 and 1"),
        (["--source", "csv", "--input", "x.csv", "--exclude", "ret_1,nope"], "unknown feature(s) nope"),
        (
            ["--source", "csv", "--input", "x.csv", "--from", "2026-02-01", "--to", "2026-01-01"],
            "--from must be before",
        ),
        (["--source", "csv", "--input", "x.csv", "--from", "yesterday"], "not an ISO-8601 time"),
        (["--source", "csv", "--input", "/nonexistent.csv"], "cannot read /nonexistent.csv"),
    ],
)
def test_train_cli_bad_arguments(argv, message, capsys):
    try:
        code = cli.main(["train", *argv])
    except SystemExit as e:  # argparse's own errors (the console script exits the same way)
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_train_cli_bad_and_short_input(env, sim, tmp_path, capsys):
    rows = sim[:50]
    path = write_csv(tmp_path / "short.csv", rows)
    assert cli.main(["train", "--source", "csv", "--input", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "200 bars of lookback" in err
    dup = write_csv(tmp_path / "dup.csv", sim[:10] + [sim[0]])
    assert cli.main(["train", "--source", "csv", "--input", str(dup)]) == 2
    assert f"{dup} line 12: bars of {sim[0]['symbol']} out of time order" in capsys.readouterr().err
    with psycopg.connect(env.database_url) as conn:
        assert conn.execute("SELECT to_regclass('models')").fetchone() == (None,)  # nothing registered


def test_db_and_topic_sources_train_the_same_model(env, sim, capsys):
    from sinks import schema
    from sinks.tables import TABLES

    schema.migrate(env)
    table = TABLES["bar"]
    with psycopg.connect(env.database_url) as conn:
        with conn.cursor().copy(f"COPY bars ({', '.join(table.columns)}) FROM STDIN") as cp:
            for b in sim:
                cp.write_row(table.row(b))
        # a bar of another interval is not picked up
        conn.execute(
            "INSERT INTO bars SELECT event_id || 'x', symbol, '1s', ts, window_start, window_end, "
            "open, high, low, close, volume, vwap, trade_count FROM bars LIMIT 1"
        )
    kafka_clients.ensure_topics(env, ["md.bars.1m"])
    serde = Serde()
    prod = kafka_clients.producer(env)
    for b in sim + sim[:30]:  # redelivered bars count once
        prod.produce(env.topic("md.bars.1m"), key=b["symbol"].encode(), value=serde.encode("bar", b))
    assert prod.flush(30) == 0

    versions = {}
    for source in ("db", "topic"):
        assert cli.main(["train", "--source", source, "--rounds", "20", "--symbols", "AAA,BBB"]) == 0
        out = capsys.readouterr().out
        assert "2 symbols" in out, out
        versions[source] = out.split("model     direction ")[1].split()[0]
    assert versions["db"] == versions["topic"]
    with psycopg.connect(env.database_url) as conn:
        fingerprints = {r[0] for r in conn.execute("SELECT metadata->'data'->>'fingerprint' FROM models")}
        assert len(fingerprints) == 1
    want = build_dataset(Bars.from_events([b for b in sim if b["symbol"] != "CCC"]), "1m", 5).fingerprint
    assert fingerprints == {want}


def test_train_on_simulated_history_for_a_fresh_stack(env, monkeypatch, capsys):
    monkeypatch.setenv("SYMBOLS", "AAPL MSFT")
    argv = [
        "train",
        "--source",
        "sim",
        "--interval",
        "1s",
        "--sim-minutes",
        "10",
        "--rounds",
        "10",
        "--exclude",
        "sma_200_rel,sma_50_rel",
    ]
    assert cli.main(argv + ["--activate"]) == 0
    out = capsys.readouterr().out
    assert "sim:seed=42 minutes=10 symbols=2" in out
    version = out.split("model     direction ")[1].split()[0]
    assert active_versions(env) == [version]
    assert cli.main(argv) == 0  # the same simulated history: the same model
    assert f"direction {version} already registered" in capsys.readouterr().out
    assert cli.main(argv[:-2] + ["--sim-minutes", "0"]) == 2
    assert "--sim-minutes must be positive" in capsys.readouterr().err

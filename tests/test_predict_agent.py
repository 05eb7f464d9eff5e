"""The predict agent in a real worker (``ticktape process worker``) on the real broker:
exact predictions of the active model, missing features skipped and counted, a newly
activated model picked up without restart, a mismatching model refused while the
previous one keeps scoring, undecodable input dead-lettered, a restarted worker resuming
its feature states (phase 2 would have no complete features otherwise)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from test_worker import Worker, read

from ticktape import kafka_clients, registry
from ticktape.core.features import FEATURE_NAMES, Bars, FeatureState, build_dataset
from ticktape.core.indicators import IndicatorState, indicator_event
from ticktape.core.ml import Model, TrainParams, train
from ticktape.core.simbars import simulated_bars
from ticktape.scrape import scrape, total
from ticktape.serde import Serde

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00Z
MINUTE = 60_000_000
serde = Serde()


def indicator_sets(bars):
    """IndicatorSets of the bars, in close order, as the indicators stage emits them."""
    states = {}
    return [indicator_event(b, states.setdefault(b["symbol"], IndicatorState("1m")).update(b)) for b in bars]


def expected(phases):
    """Per phase: the predictions of its model over its sets, and the sets skipped for
    missing features — the core's own computation, features folded across phases."""
    states = defaultdict(FeatureState)
    out = []
    for model, sets in phases:
        items = [(ind, states[ind["symbol"]].update(ind)) for ind in sets]
        preds, missing, _ = model.predictions(items)
        out.append(({p["event_id"]: p for p in preds}, missing))
    return out


def produce(s, sets, extra=()):
    prod = kafka_clients.producer(s)
    for ind in sets:
        prod.produce(
            s.topic("analytics.indicators"), key=ind["symbol"].encode(), value=serde.encode("indicator_set", ind)
        )
    for key, value in extra:
        prod.produce(s.topic("analytics.indicators"), key=key, value=value)
    assert prod.flush(30) == 0


def predictions(s, count):
    got = {}
    for msgs in read(s, "ml.predictions", count, quiet=1.5).values():
        for m in msgs:
            pred = serde.decode(m.value())[1]
            assert pred["event_id"] not in got  # no prediction twice
            assert m.key() == pred["symbol"].encode()
            got[pred["event_id"]] = pred
    return got


def test_predict_agent_scores_swaps_and_refuses(settings, fresh_db, tmp_path):
    s = dataclasses.replace(settings, database_url=fresh_db)
    kafka_clients.ensure_topics(s)
    history = simulated_bars(["AAA", "BBB", "CCC"], seed=11, start_us=T0, minutes=420, tick_rate=3.0)
    ds = build_dataset(Bars.from_events(history), "1m", 5)
    first = train(ds, FEATURE_NAMES, 0.2, TrainParams(rounds=20), "direction")
    second = train(ds, FEATURE_NAMES, 0.2, TrainParams(rounds=20, seed=7), "direction")
    for t in (first, second):
        registry.register(s, t)
    registry.activate(s, first.version)  # announced before the worker starts: read at start-up

    live = simulated_bars(["AAA", "BBB", "CCC"], seed=5, start_us=T0 + 1440 * MINUTE, minutes=250, tick_rate=3.0)
    sets = indicator_sets(live)
    t1, t2 = T0 + (1440 + 215) * MINUTE, T0 + (1440 + 235) * MINUTE
    phase = [
        [i for i in sets if i["ts"] <= t1],
        [i for i in sets if t1 < i["ts"] <= t2],
        [i for i in sets if i["ts"] > t2],
    ]
    model_a, model_b = Model.load(first.artifact, first.metadata), Model.load(second.artifact, second.metadata)
    (want_a, missing_a), (want_b, _), (want_b2, _) = expected(
        [(model_a, phase[0]), (model_b, phase[1]), (model_b, phase[2])]
    )
    assert len(want_a) > 30 and len(want_b) > 30 and len(want_b2) > 30 and missing_a == 3 * 199

    worker = Worker(s, tmp_path / "worker.log", DATABASE_URL=fresh_db)
    try:
        produce(s, phase[0], extra=[(b"AAA", b"not avro")])
        got = predictions(s, len(want_a))
        assert got == want_a, worker.log_tail()  # exact p_up and features, model A's version
        assert worker.wait_metric("ticktape_predictions_skipped_total", missing_a, reason="missing_features")
        assert worker.metric("ticktape_predictions_total", model="direction") == len(want_a)
        assert worker.metric("ticktape_model_active", model="direction", version=first.version) == 1
        assert total(scrape(worker.metrics_port), "ticktape_inference_latency_seconds_count") == len(want_a)
        dead = [m for msgs in read(s, "dlq.predict", 1, quiet=0.5).values() for m in msgs]
        assert [m.value() for m in dead] == [b"not avro"]
        assert dict(dead[0].headers())["ticktape.error"].startswith(b"not an Avro event")

        # a restarted worker resumes: feature states from the changelog, the model from ml.models
        assert worker.stop() == 0, worker.log_tail()
        worker = Worker(s, tmp_path / "worker2.log", DATABASE_URL=fresh_db)
        assert worker.wait_metric("ticktape_model_active", 1, model="direction", version=first.version)

        registry.activate(s, second.version)  # hot swap: no restart
        assert worker.wait_metric("ticktape_model_active", 1, model="direction", version=second.version)
        produce(s, phase[1])
        got = predictions(s, len(want_a) + len(want_b))
        assert {k: v for k, v in got.items() if k not in want_a} == want_b
        assert {p["model_version"] for p in want_b.values()} == {second.version}

        # a model whose features this pipeline does not produce: refused, B keeps scoring
        bad = second.metadata | {"version": "0badf00d0bad", "features": [*FEATURE_NAMES[:-1], "rsi_7"]}
        registry.announce(s, bad, second.artifact)
        assert worker.wait_metric("ticktape_model_refusals_total", 1, model="direction")
        produce(s, phase[2])
        got = predictions(s, len(want_a) + len(want_b) + len(want_b2))
        assert {k: v for k, v in got.items() if k not in want_a and k not in want_b} == want_b2
        assert worker.metric("ticktape_model_active", model="direction", version=second.version) == 1
        log = worker.log_path.read_text()
        assert (
            "model direction 0badf00d0bad refused: the pipeline does not produce feature(s) rsi_7" in log
            and f"keeping the active model (direction {second.version})" in log
        )
        assert worker.wait_metric(
            "ticktape_events_in_total", len(phase[1]) + len(phase[2]), stage="predict", topic="analytics.indicators"
        )
    finally:
        rc = worker.stop()
    assert rc == 0, worker.log_tail()

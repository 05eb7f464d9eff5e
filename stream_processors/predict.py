"""The predict stage: analytics.indicators → ml.predictions (+ dlq.predict).

Features: each IndicatorSet is folded into its symbol's ``FeatureState``
(``ticktape.core.features``, the code training uses), kept in the ``features`` table —
key ``<interval>:<symbol>`` — and written to its changelog after each batch, so a
restarted worker resumes exactly.  Every set is folded, whatever the active model, so a
newly activated model scores from its first bar.

Scoring: a model's user indicator features (``INDICATORS``) are read from each set's
``extra``, as training computed them.  The sets of the active model's interval whose features are complete are scored
together, one XGBoost call per batch (``stream.take_events``: a batch when several sets
are waiting, a single row otherwise); a set with a missing feature (lookback not filled)
is skipped and counted, never scored.  The table also holds each input partition's next
offset for ``InputGuard``, which hands over a gap-free run of messages from it.  Per
batch, as in the bars stage: send the predictions and dead letters and wait for the
broker, then the changelog (``save_state``), then ack.

The model: a ``ModelWatcher`` thread in every worker reads the compacted ml.models
topic from its start (no consumer group: every worker sees every announcement), checks
each announced model (``Model.load``) and swaps it in between two batches — no restart.
A model this pipeline cannot score with (its user indicators included: not configured,
or changed since training) is refused: a logged error, the
``ticktape_model_refusals`` counter, and the previous model stays active.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from typing import cast

import faust
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from ticktape import deadletter, kafka_clients, metrics
from ticktape.api import load_indicators
from ticktape.config import Settings
from ticktape.core.features import FeatureError, FeatureState
from ticktape.core.ml import Model
from ticktape.registry import MODELS_TOPIC, parse_announcement
from ticktape.serde import Serde, SerdeError
from ticktape.validate import Validator

from .app import InputGuard, run_stage, save_state

log = logging.getLogger(__name__)

STAGE = "predict"
STARTUP_WAIT_S = 15.0  # the first batch waits this long at most for ml.models to be read


class ModelWatcher:
    """The active model of this worker, kept current from ml.models by a thread."""

    def __init__(self, s: Settings):
        self.s = s
        self.indicators = load_indicators(s)
        self.model: Model | None = None  # swapped whole: readers see the old or the new one
        self.caught_up = threading.Event()  # ml.models read to its end once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def apply(self, value: bytes) -> bool:
        """Load and check one announcement; True when it became the active model."""
        name = "?"
        try:
            meta, artifact = parse_announcement(value)
            name = str(meta.get("name", "?"))
            model = Model.load(artifact, meta, self.indicators)
        except ValueError as e:  # ModelMismatch included
            current = self.model
            keep = f"{current.name} {current.version}" if current else "none"
            log.error("%s; keeping the active model (%s)", e, keep)
            metrics.MODEL_REFUSALS.labels(name).inc()
            return False
        old = self.model
        if old is not None and (old.name, old.version) == (model.name, model.version):
            return False
        self.model = model
        if old is not None:
            metrics.MODEL_ACTIVE.remove(old.name, old.version)
        metrics.MODEL_ACTIVE.labels(model.name, model.version).set(1)
        log.info(
            "scoring with model %s %s (%s, horizon %d, %d features)",
            model.name,
            model.version,
            model.interval,
            model.horizon,
            len(model.features),
        )
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        topic = self.s.topic(MODELS_TOPIC)
        partitions = kafka_clients.topic_spec(MODELS_TOPIC).partitions
        consumer = kafka_clients.consumer(self.s, self.s.group("predict.models"), **{"enable.partition.eof": True})
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        at_end: set[int] = set()
        try:
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:  # type: ignore[union-attr]  # error() is not None here
                        at_end.add(msg.partition())  # type: ignore[arg-type]  # a consumed message has a partition
                        if len(at_end) == partitions:
                            self.caught_up.set()
                    else:
                        log.warning("reading %s: %s", topic, msg.error())
                    continue
                self.apply(msg.value())  # type: ignore[arg-type]  # a tombstone (None) is refused as not an announcement
        finally:
            consumer.close()


class PredictStage:
    def __init__(self, app: faust.App, s: Settings, table, watcher: ModelWatcher):
        self.app = app
        self.table = table
        self.watcher = watcher
        self.serde = Serde(s.schema_registry_url)
        self.validator = Validator(s)
        self.source = s.topic("analytics.indicators")
        self.out_topic = s.topic("ml.predictions")
        self.dlq_topic = s.topic("dlq.predict")
        self.grace_s = s.bar_grace_ms / 1000
        self._states: dict[int, dict[str, FeatureState]] = defaultdict(dict)
        self.guard = InputGuard(s)
        self._in = metrics.EVENTS_IN.labels(STAGE, "analytics.indicators")
        self._out = metrics.EVENTS_OUT.labels(STAGE, "ml.predictions")
        self._dlq = metrics.DLQ_MESSAGES.labels(STAGE, "dlq.predict")
        self.dlq_max_bytes = s.dlq_max_bytes
        self._latency = metrics.EVENT_LATENCY.labels(STAGE)
        self._missing = metrics.PREDICTIONS_SKIPPED.labels("missing_features")
        self._no_model = metrics.PREDICTIONS_SKIPPED.labels("no_model")

    # -- state ---------------------------------------------------------------------
    def forget(self, partitions) -> None:
        """Drop cached states (after a rebalance the table is the truth)."""
        for p in partitions:
            self._states.pop(p, None)
        self.guard.forget(partitions)

    def state(self, partition: int, key: str) -> FeatureState:
        states = self._states[partition]
        st = states.get(key)
        if st is None:
            saved = self.table.data.get(key)
            st = states[key] = FeatureState.from_state(saved) if saved else FeatureState()
        return st

    # -- processing ------------------------------------------------------------------
    async def process(self, events) -> None:
        if not self.watcher.caught_up.is_set():  # first batch: learn the active model first
            await asyncio.get_running_loop().run_in_executor(None, self.watcher.caught_up.wait, STARTUP_WAIT_S)
        model = self.watcher.model  # one model for the whole batch
        assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.source}
        deliveries, dirty, items, partition_of = [], {}, [], {}
        no_model = 0
        runs = await self.guard.runs(
            self.table, [ev.message for ev in events if ev.message.partition in assigned]
        )  # else its new owner processes it
        self._in.inc(sum(len(records) for _, _, records in runs))  # each input record once, however often it came
        for msg in (msg for _, _, records in runs for msg in records):
            try:
                event_type, ind = self.serde.decode(cast(bytes, msg.value))  # None: SerdeError("empty message")
                if event_type != "indicator_set":
                    raise SerdeError(f"expected an indicator_set, got a {event_type}")
                self.validator.check(event_type, ind)
                key = f"{ind['interval']}:{ind['symbol']}"
                st = self.state(msg.partition, key)
                vec = st.update(ind)
            except (SerdeError, FeatureError) as e:
                deliveries.append(await self._dead_letter(msg, str(e)))
                continue
            if vec is None:
                continue  # redelivered: folded (and scored) before
            dirty[key] = (msg.partition, st)
            if model is None:
                no_model += 1
            elif ind["interval"] == model.interval:
                items.append((ind, vec))
                partition_of[ind["symbol"]] = msg.partition
        if no_model:
            self._no_model.inc(no_model)
        if items:
            assert model is not None  # items are added only with a model
            preds, missing, seconds = model.predictions(items)
            self._missing.inc(missing)
            send = self.app.producer.send
            now = time.time()
            for pred in preds:
                value = self.serde.encode("prediction", pred, topic=self.out_topic)
                deliveries.append(
                    await send(
                        self.out_topic,
                        pred["symbol"].encode(),
                        value,
                        partition_of[pred["symbol"]],
                        pred["ts"] / 1e6,
                        None,
                    )
                )
                metrics.INFERENCE_LATENCY.observe(seconds)
                self._latency.observe(now - pred["ts"] / 1e6 - self.grace_s)
            self._out.inc(len(preds))
            metrics.PREDICTIONS.labels(model.name).inc(len(preds))
        await asyncio.gather(*deliveries)
        await save_state(
            self.table,
            [(partition, key, {"p": partition, **st.to_state()}) for key, (partition, st) in dirty.items()]
            + self.guard.offset_entries(runs),
        )

    async def _dead_letter(self, msg, error: str):
        self._dlq.inc()
        dl = deadletter.of_message(msg, error, stage=STAGE, max_bytes=self.dlq_max_bytes)
        return await self.app.producer.send(self.dlq_topic, dl.key, dl.value, None, msg.timestamp, dl.headers)


def attach(app: faust.App, s: Settings) -> None:
    indicators = app.topic(s.topic("analytics.indicators"), key_serializer="raw", value_serializer="raw")
    table = app.Table("features", partitions=kafka_clients.topic_spec("analytics.indicators").partitions)
    watcher = ModelWatcher(s)
    stage = PredictStage(app, s, table, watcher)

    @app.task
    async def watch_models() -> None:
        watcher.start()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust awaits async receivers
    async def stop_watching(sender, **kwargs) -> None:
        watcher.stop()

    run_stage(app, s, stage, indicators, name=STAGE)

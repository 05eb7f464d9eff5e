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
offset; the runner (``runner.py``) reads from it and sends and saves each batch.

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

import faust
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from ticktape import kafka_clients, metrics
from ticktape.api import load_indicators
from ticktape.config import Settings
from ticktape.core.features import FeatureError, FeatureState
from ticktape.core.ml import Model
from ticktape.registry import MODELS_TOPIC, parse_announcement

from .runner import Outbox, Stage, run

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


class PredictStage(Stage):
    name = STAGE
    dlq = "dlq.predict"

    def __init__(self, s: Settings, table, watcher: ModelWatcher):
        super().__init__(s, table)
        self.watcher = watcher
        self.accept("analytics.indicators", "indicator_set")
        self.predictions = self.sink("ml.predictions")
        self.grace_s = s.bar_grace_ms / 1000
        self._states: dict[int, dict[str, FeatureState]] = defaultdict(dict)
        self._latency = metrics.EVENT_LATENCY.labels(STAGE)
        self._missing = metrics.PREDICTIONS_SKIPPED.labels("missing_features")
        self._no_model = metrics.PREDICTIONS_SKIPPED.labels("no_model")
        # this batch's: one model for the whole batch, the changed states, the sets to score
        self._model: Model | None = None
        self._dirty: dict[str, tuple[int, FeatureState]] = {}
        self._items: list[tuple[dict, list]] = []
        self._partition_of: dict[str, int] = {}
        self._unscored = 0

    # -- state ---------------------------------------------------------------------
    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self._states.pop(p, None)

    def state(self, partition: int, key: str) -> FeatureState:
        states = self._states[partition]
        st = states.get(key)
        if st is None:
            saved = self.table.data.get(key)
            st = states[key] = FeatureState.from_state(saved) if saved else FeatureState()
        return st

    # -- processing ------------------------------------------------------------------
    async def begin(self) -> None:
        if not self.watcher.caught_up.is_set():  # first batch: learn the active model first
            await asyncio.get_running_loop().run_in_executor(None, self.watcher.caught_up.wait, STARTUP_WAIT_S)
        self._model = self.watcher.model

    def fold(self, msg, event: tuple[str, dict], out: Outbox) -> None:
        ind = event[1]
        key = f"{ind['interval']}:{ind['symbol']}"
        try:
            st = self.state(msg.partition, key)
            vec = st.update(ind)
        except FeatureError as e:
            out.dead_letter(msg, str(e))
            return
        if vec is None:
            return  # redelivered: folded (and scored) before
        self._dirty[key] = (msg.partition, st)
        model = self._model
        if model is None:
            self._unscored += 1
        elif ind["interval"] == model.interval:
            self._items.append((ind, vec))
            self._partition_of[ind["symbol"]] = msg.partition

    async def finish(self, out: Outbox) -> None:
        model, items, partition_of = self._model, self._items, self._partition_of
        self._items, self._partition_of = [], {}
        if self._unscored:
            self._no_model.inc(self._unscored)
            self._unscored = 0
        if items:
            assert model is not None  # items are added only with a model
            preds, missing, seconds = model.predictions(items)
            self._missing.inc(missing)
            now = time.time()
            for pred in preds:
                out.send(self.predictions, "prediction", pred, pred["symbol"], partition_of[pred["symbol"]])
                metrics.INFERENCE_LATENCY.observe(seconds)
                self._latency.observe(now - pred["ts"] / 1e6 - self.grace_s)
            metrics.PREDICTIONS.labels(model.name).inc(len(preds))
        dirty, self._dirty = self._dirty, {}
        for key, (partition, st) in dirty.items():
            out.changes[key] = (partition, {"p": partition, **st.to_state()})


def attach(app: faust.App, s: Settings) -> None:
    table = app.Table("features", partitions=kafka_clients.topic_spec("analytics.indicators").partitions)
    watcher = ModelWatcher(s)

    @app.task
    async def watch_models() -> None:
        watcher.start()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust awaits async receivers
    async def stop_watching(sender, **kwargs) -> None:
        watcher.stop()

    run(app, s, PredictStage(s, table, watcher))

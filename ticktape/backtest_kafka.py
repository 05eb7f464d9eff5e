"""Kafka mode of a backtest: the real Faust worker in an isolated namespace.

1. every catalog topic is created under ``bt.<run_id>.`` and the model is announced on
   ``bt.<run_id>.ml.models``;
2. ``python -m ticktape.cli process worker`` starts with ``TOPIC_PREFIX=bt.<run_id>.``,
   a TICKTAPE_HOME and /metrics port of its own and the run's parameters as env vars
   (so its consumer groups and changelogs are the run's own too);
3. the period's ticks go to ``bt.<run_id>.md.ticks``, each in the partition it came
   from, in order, then one flush tick per partition (``core.backtest.flush_ticks``);
4. a reader takes every topic of the namespace from the start until the run has
   settled (``Settler``): the reader has every event the worker says it published (its
   /metrics) and the worker's consumer group has committed, on every topic a stage
   reads, the end the reader saw — Faust commits an offset only after the outputs of
   its event are delivered — and nothing has moved for ``SETTLE_S``;
5. the worker is stopped and, unless ``keep``, the namespace's topics and consumer
   groups are deleted.

Nothing outside the namespace is written.  A dead letter in the run is an error (the
in-process run would disagree with it).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import fields, replace
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from . import kafka_clients, registry
from .config import REPO_ROOT, Settings
from .core.backtest import TRADING_KINDS, Events
from .core.bars import is_heartbeat
from .scrape import scrape, total
from .serde import Serde, SerdeError
from .stack import free_port

log = logging.getLogger(__name__)
SETTLE_S = 2.0  # every count unchanged this long after they first agree = done
ANALYTICS_TYPES = ("bar", "indicator_set", "prediction")


class KafkaModeError(RuntimeError):
    """The kafka-mode run failed (worker died, dead letters, timeout): one line."""


def namespace(run_id: str) -> str:
    return f"bt.{run_id}."


def settings_env(s: Settings) -> dict[str, str]:
    """The settings as the env vars a child process reads them from."""
    return {f.metadata["env"]: str(getattr(s, f.name)) for f in fields(s)}


def output_topics(s: Settings) -> dict[str, str]:
    """Catalog topics read back, name -> event type: those of one event type the run
    records (bars of its intervals, analytics, trading), plus the late-tick topic."""
    wanted = set(ANALYTICS_TYPES) | set(TRADING_KINDS.values())
    out = {}
    for name, spec in kafka_clients.topic_catalog().items():
        if name.startswith("md.bars.") and name[len("md.bars.") :] not in s.interval_list:
            continue
        if spec.event in wanted or name == "md.ticks.late":
            assert spec.event is not None  # one of the wanted types, or md.ticks.late's tick
            out[name] = spec.event
    return out


def python_path() -> str:
    """The worker's PYTHONPATH: the repo, then where a STRATEGY module is found from here
    (the current directory and PYTHONPATH), as ``ticktape.api.load_strategy`` finds it."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys([str(REPO_ROOT), os.getcwd(), *extra]))


class _Worker:
    def __init__(self, s: Settings, env: dict[str, str]):
        self.port = s.metrics_port
        self.log_path = Path(s.home) / "worker.log"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ticktape.cli", "process", "worker"],
                cwd=REPO_ROOT,
                env=os.environ | env | {"PYTHONPATH": python_path()},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""


def replay(s: Settings, ticks_by_partition: dict[int, list[dict]]) -> int:
    """Send the ticks (and heartbeats: a recorded source's, in their partition) to the
    namespace's md.ticks, each partition in order; the count."""
    topic = s.topic("md.ticks")
    serde = Serde(s.schema_registry_url)
    prod = kafka_clients.producer(s)
    errors: list = []

    def delivered(err, msg):
        if err is not None:
            errors.append(err)

    n = 0
    for p in sorted(ticks_by_partition):
        for t in ticks_by_partition[p]:
            hb = is_heartbeat(t)  # no symbol, so no key: the partition is the record's
            value = serde.encode("heartbeat" if hb else "tick", t, topic=topic)
            while True:
                try:
                    prod.produce(
                        topic,
                        value=value,
                        key=None if hb else t["symbol"].encode(),
                        partition=p,
                        timestamp=t["ts"] // 1000,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    prod.poll(0.05)
            n += 1
    if prod.flush(60) != 0 or errors:
        raise KafkaModeError(f"replay into {topic}: {errors[0] if errors else 'delivery timed out'}")
    return n


class Reader:
    """Every catalog topic of a namespace from its start (ml.models aside): the output
    topics decoded by catalog name, and how far each partition of every topic goes."""

    def __init__(self, s: Settings):
        self.s = s
        self.topics = output_topics(s)
        self.serde = Serde(s.schema_registry_url)
        self.events: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
        self.seen: dict[str, int] = defaultdict(int)
        self.ends: dict[tuple[str, int], int] = {}  # (catalog name, partition) -> last offset + 1
        self.dead_letters: list[str] = []
        self.cons = kafka_clients.consumer(s, s.group("backtest.reader"))
        existing = set(kafka_clients.admin(s).list_topics(timeout=10).topics)
        self.cons.assign(
            [
                TopicPartition(s.topic(name), p, OFFSET_BEGINNING)
                for name, spec in kafka_clients.topic_catalog().items()
                if name != registry.MODELS_TOPIC and s.topic(name) in existing
                for p in range(spec.partitions)
            ]
        )
        self.prefix = len(s.topic_prefix)

    def poll(self, seconds: float) -> None:
        # confluent_kafka types a message's topic, partition, offset, headers' values and value
        # Optional: a consumed one without an error has them all (a header value is bytes)
        for msg in self.cons.consume(5000, seconds):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("backtest reader: %s", err)
                continue
            name = msg.topic()[self.prefix :]  # type: ignore[index]
            self.seen[name] += 1
            self.ends[(name, msg.partition())] = msg.offset() + 1  # type: ignore[index, operator]
            if name not in self.topics and not name.startswith("dlq."):
                continue  # read for its end only
            if name.startswith("dlq."):
                headers = dict(msg.headers() or ())
                self.dead_letters.append(f"{name}: {headers.get('ticktape.error', b'?').decode(errors='replace')}")  # type: ignore[union-attr]
                continue
            try:
                _, event = self.serde.decode(msg.value())  # type: ignore[arg-type]
            except SerdeError as e:
                raise KafkaModeError(f"undecodable event on {msg.topic()}: {e}") from None
            self.events[name][msg.partition()].append(event)  # type: ignore[index]

    def close(self) -> None:
        self.cons.close()

    def by_type(self) -> dict[str, list[dict]]:
        """Events per type, topic by topic, partition by partition in offset order."""
        out: dict[str, list[dict]] = defaultdict(list)
        for name in sorted(self.topics):
            if name == "md.ticks.late":
                continue
            for p in sorted(self.events[name]):
                out[self.topics[name]].extend(self.events[name][p])
        return dict(out)


class Settler:
    """Tells when a worker has processed everything of a namespace (see the module doc):
    ``settled()`` is polled; the reader must be polled in between."""

    def __init__(self, s: Settings, reader: Reader, metrics_port: int, sources: dict[str, int]):
        self.s, self.reader, self.port = s, reader, metrics_port
        self.sources = sources  # events published into the namespace by others, per catalog topic
        self.group = kafka_clients.consumer(s, s.group("worker"))  # only asked for its commits
        self.samples: dict = {}
        self.last: tuple | None = None  # the counts' last snapshot
        self.since = time.monotonic()  # when the snapshot last changed or the counts last disagreed
        self.changed = self.since  # when the snapshot last changed
        self.before_input = self.since  # the last poll that saw the worker take no source event yet
        self.taking = False

    def processing_s(self) -> float:
        """Seconds from the last poll before the worker took its first source event to its
        counts' last change: its start-up and the settling wait excluded (a poll's time at
        most included)."""
        return self.changed - self.before_input

    def close(self) -> None:
        self.group.close()

    def _agreed(self) -> bool:
        samples, seen = self.samples, self.reader.seen
        produced: dict[str, float] = defaultdict(float, self.sources)
        for labels, v in samples.get("ticktape_events_out_total", ()):
            produced[labels["topic"]] += v
        if any(seen.get(topic, 0) != n for topic, n in produced.items()):
            return False  # the reader is behind
        consumed = {labels["topic"] for labels, _ in samples.get("ticktape_events_in_total", ())}
        if not set(self.sources) <= consumed:
            return False
        wanted = [TopicPartition(self.s.topic(t), p) for (t, p), end in self.reader.ends.items() if t in consumed]
        committed = self.group.committed(wanted, timeout=10) if wanted else []
        ends = self.reader.ends
        return all(tp.offset == ends[(tp.topic[len(self.s.topic_prefix) :], tp.partition)] for tp in committed)

    def settled(self) -> bool:
        self.samples = scrape(self.port) or self.samples
        now = time.monotonic()
        if not self.taking:
            self.taking = any(
                v > 0 for lbl, v in self.samples.get("ticktape_events_in_total", ()) if lbl["topic"] in self.sources
            )
            if not self.taking:
                self.before_input = now
        snap = (
            tuple(sorted(self.reader.seen.items())),
            tuple(
                sorted(
                    (n, tuple(sorted(lbl.items())), v)
                    for n in ("ticktape_events_in_total", "ticktape_events_out_total")
                    for lbl, v in self.samples.get(n, ())
                )
            ),
        )
        if snap != self.last:
            self.changed = now
        if snap != self.last or not self._agreed():
            self.last, self.since = snap, now
            return False
        return now - self.since >= SETTLE_S


def run(
    s_run: Settings,
    run_id: str,
    ticks_by_partition: dict[int, list[dict]],
    model: tuple[dict, bytes] | None,
    keep: bool = False,
    timeout_s: float = 900.0,
    say=lambda line: None,
    timing: dict | None = None,
) -> Events:
    """The period through the real worker in ``bt.<run_id>.``; the events it produced.

    ``s_run``: the live settings with the run's parameters (they reach the worker as env
    vars); ``model``: (metadata, artifact) to announce, or None; ``timing``, when given,
    gets ``processing_s`` (``Settler.processing_s``)."""
    home = Path(tempfile.mkdtemp(prefix=f"ticktape-bt-{run_id}-"))
    # a backtest fills on the paper desk, never at an external venue (EXECUTION_VENUE)
    s = replace(
        s_run, topic_prefix=namespace(run_id), home=str(home), metrics_port=free_port(), execution_venue="paper"
    )
    worker = reader = None
    try:
        kafka_clients.ensure_topics(s)
        if model is not None:
            registry.announce(s, *model)
        worker = _Worker(s, settings_env(s))
        replayed = replay(s, ticks_by_partition)
        reader = Reader(s)
        settler = Settler(s, reader, s.metrics_port, {"md.ticks": replayed})
        say(f"kafka mode: {replayed:,} ticks replayed into {s.topic('md.ticks')}; waiting for the worker")
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                reader.poll(0.2)
                if reader.dead_letters:
                    raise KafkaModeError(f"dead letter in the run: {reader.dead_letters[0]}")
                if not worker.alive():
                    raise KafkaModeError(f"the worker exited with code {worker.proc.returncode}: {worker.tail()}")
                if settler.settled():
                    break
                if time.monotonic() > deadline:
                    raise KafkaModeError(f"the worker did not finish within {timeout_s:.0f} s (see {worker.log_path})")
        finally:
            settler.close()
        if timing is not None:
            timing["processing_s"] = settler.processing_s()
        samples = settler.samples
        events = Events(
            by_type=reader.by_type(),
            late_ticks=reader.seen.get("md.ticks.late", 0),
            invalid_ticks=int(total(samples, "ticktape_dlq_messages_total", stage="bars")),
            skipped_predictions=int(total(samples, "ticktape_predictions_skipped_total", reason="missing_features")),
            risk_late=int(total(samples, "ticktape_risk_late_events_total")),
            risk_forced=int(total(samples, "ticktape_risk_forced_releases_total")),
        )
        if events.risk_late or events.risk_forced:
            say(
                f"kafka mode: the risk desk took {events.risk_late:,} account events late and released "
                f"{events.risk_forced:,} without waiting (a partition fell behind the others by more than "
                "RISK_IDLE_MS, or RISK_MAX_PENDING events waited): this run can differ from in-process"
            )
        code = worker.stop()
        if code not in (0, -signal.SIGTERM):
            raise KafkaModeError(f"the worker exited with code {code}: {worker.tail()}")
        return events
    finally:
        if worker is not None:
            worker.stop()
        if reader is not None:
            reader.close()
        if keep:
            say(f"kafka mode: kept the topics {namespace(run_id)}* (worker log {home / 'worker.log'})")
        else:
            cleanup(s_run, run_id)
            shutil.rmtree(home, ignore_errors=True)


def namespace_topics(s: Settings, run_id: str) -> list[str]:
    prefix = namespace(run_id)
    return sorted(t for t in kafka_clients.admin(s).list_topics(timeout=10).topics if t.startswith(prefix))


def cleanup(s: Settings, run_id: str) -> None:
    """Delete the namespace's topics (changelogs included) and consumer groups."""
    topics = namespace_topics(s, run_id)
    if topics:
        kafka_clients.delete_topics(s, topics)
    adm = kafka_clients.admin(s)
    try:
        groups = [
            g.group_id
            for g in adm.list_consumer_groups(request_timeout=10).result().valid
            if g.group_id.startswith(namespace(run_id))
        ]
        if groups:
            for fut in adm.delete_consumer_groups(groups, request_timeout=10).values():
                fut.result()
    except Exception as e:  # groups expire by themselves; not every broker lists or deletes them
        log.debug("backtest %s: consumer groups not deleted: %s", run_id, e)

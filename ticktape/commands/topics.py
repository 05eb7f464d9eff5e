"""`ticktape topics list|describe|create|tail`: the topic catalog (kafka/topics.yaml)."""

from __future__ import annotations

import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from .. import kafka_clients
from ..cli import UsageError, positive_int
from ..config import settings
from ..core.tickbatch import events_of
from ..core.trading import iso
from ..serde import Serde, SerdeError, to_json


def register(sub):
    p = sub.add_parser("topics", help="the topic catalog: list, describe, create, tail")
    tsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    tsub.add_parser("list", help="catalog topics and whether they exist").set_defaults(func=run_list)
    d = tsub.add_parser("describe", help="partitions and configs of a topic")
    d.add_argument("topic")
    d.set_defaults(func=run_describe)
    tsub.add_parser("create", help="create missing catalog topics").set_defaults(func=run_create)
    t = tsub.add_parser(
        "tail",
        help="print decoded events as JSON lines (a TickBatch as its ticks; ts_iso "
        "beside ts; ml.models: the announced model's metadata)",
    )
    t.add_argument("topic", help="catalog name (the run prefix is added) or a full topic name")
    t.add_argument("--from-beginning", action="store_true", help="start at the oldest event")
    t.add_argument("--count", type=positive_int, help="stop after N events")
    t.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="stop after S seconds without events (default: never; 5 with --from-beginning)",
    )
    t.set_defaults(func=run_tail)


def with_iso(record: dict) -> dict:
    """The record with ``ts_iso`` (ISO-8601 UTC) beside its ``ts`` (epoch microseconds)."""
    ts = record.get("ts")
    return record | {"ts_iso": iso(ts)} if isinstance(ts, int) else record


def _full_name(s, name: str) -> str:
    return s.topic(name) if name in kafka_clients.topic_catalog() else name


def run_list(args) -> int:
    s = kafka_clients.check_reachable(settings())
    found = kafka_clients.admin(s).list_topics(timeout=10).topics
    # the worker's tables' changelogs (Faust names them <app id>-<table>-changelog)
    changelogs = sorted(t for t in found if t.startswith(s.group("worker") + "-") and t.endswith("-changelog"))
    rows = [
        (s.topic(name), spec.event or "-", spec.partitions, str(spec.retention_ms), spec.cleanup_policy)
        for name, spec in kafka_clients.topic_catalog().items()
    ]
    rows += [(t, "changelog", len(found[t].partitions), "-", "compact") for t in changelogs]
    offsets = kafka_clients.watermarks(s, {t: sorted(found[t].partitions) for t, *_ in rows if t in found})
    print(f"{'topic':<44} {'event':<15} {'part':>4} {'retention.ms':>13}  {'cleanup':<9} {'offsets':>10}  exists")
    for full, event, parts, retention, cleanup in rows:
        held = f"{sum(h - lo for lo, h in offsets[full].values()):,}" if full in offsets else "-"
        print(
            f"{full:<44} {event:<15} {parts:>4} {retention:>13}  {cleanup:<9} {held:>10}  "
            f"{'yes' if full in found else 'no'}"
        )
    return 0


def run_describe(args) -> int:
    s = kafka_clients.check_reachable(settings())
    try:
        info = kafka_clients.describe_topic(s, _full_name(s, args.topic))
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None
    print(json.dumps(info, indent=2))
    return 0


def run_create(args) -> int:
    created = kafka_clients.ensure_topics(kafka_clients.check_reachable(settings()))
    print(f"created {len(created)} topics" + (": " + ", ".join(created) if created else ""))
    return 0


def run_tail(args) -> int:
    s = kafka_clients.check_reachable(settings())
    topic = _full_name(s, args.topic)
    try:
        md = kafka_clients.topic_metadata(s, topic)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None
    # no consumer group: tail is a read-only look, it must not move anyone's offsets
    consumer = kafka_clients.consumer(s, group=s.group("tail"), **{"enable.auto.offset.store": False})
    if args.from_beginning:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
    else:  # from each partition's high watermark as it is now: only what comes from here on
        ends = kafka_clients.watermarks(s, {topic: sorted(md.partitions)})[topic]
        consumer.assign([TopicPartition(topic, p, high) for p, (_, high) in ends.items()])
    serde = Serde(s.schema_registry_url)
    from ..registry import MODELS_TOPIC, parse_announcement  # here: it loads XGBoost

    def decode(value: bytes) -> list[dict]:
        if topic == s.topic(MODELS_TOPIC):  # JSON announcements, not Avro: the metadata, not the artifact
            meta, artifact = parse_announcement(value)
            return [{"announced": meta, "artifact_bytes": len(artifact)}]
        return events_of(*serde.decode(value))  # a TickBatch: its ticks

    idle = args.idle_timeout if args.idle_timeout is not None else (5.0 if args.from_beginning else None)
    seen, last = 0, time.monotonic()
    try:
        while args.count is None or seen < args.count:
            msg = consumer.poll(0.5)
            if msg is None:
                if idle is not None and time.monotonic() - last > idle:
                    break
                continue
            if msg.error():
                raise KafkaException(msg.error())
            last = time.monotonic()
            try:
                # confluent_kafka: value() is None for a tombstone; decode reports it as undecodable
                lines = [to_json(with_iso(r)) for r in decode(msg.value())]  # type: ignore[arg-type]
            except (SerdeError, ValueError) as e:
                lines = [json.dumps({"undecodable": str(e), "partition": msg.partition(), "offset": msg.offset()})]
            if args.count is not None:
                lines = lines[: args.count - seen]
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
            seen += len(lines)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        consumer.close()
    return 0

"""`ticktape topics list|describe|create|tail`: the topic catalog (kafka/topics.yaml)."""
from __future__ import annotations

import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

from .. import kafka_clients
from ..cli import UsageError, positive_int
from ..config import settings
from ..core.tickbatch import events_of
from ..serde import Serde, SerdeError, to_json


def register(sub):
    p = sub.add_parser("topics", help="the topic catalog: list, describe, create, tail")
    tsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    tsub.add_parser("list", help="catalog topics and whether they exist").set_defaults(func=run_list)
    d = tsub.add_parser("describe", help="partitions and configs of a topic")
    d.add_argument("topic")
    d.set_defaults(func=run_describe)
    tsub.add_parser("create", help="create missing catalog topics").set_defaults(func=run_create)
    t = tsub.add_parser("tail", help="print decoded events as JSON lines (a TickBatch as its ticks)")
    t.add_argument("topic", help="catalog name (the run prefix is added) or a full topic name")
    t.add_argument("--from-beginning", action="store_true", help="start at the oldest event")
    t.add_argument("--count", type=positive_int, help="stop after N events")
    t.add_argument("--idle-timeout", type=float, default=None,
                   help="stop after S seconds without events (default: never; 5 with --from-beginning)")
    t.set_defaults(func=run_tail)


def _full_name(s, name: str) -> str:
    return s.topic(name) if name in kafka_clients.topic_catalog() else name


def run_list(args) -> int:
    s = kafka_clients.check_reachable(settings())
    existing = set(kafka_clients.admin(s).list_topics(timeout=10).topics)
    print(f"{'topic':<40} {'event':<15} {'part':>4} {'retention.ms':>13}  cleanup   exists")
    for name, spec in kafka_clients.topic_catalog().items():
        full = s.topic(name)
        print(f"{full:<40} {spec.event or '-':<15} {spec.partitions:>4} {spec.retention_ms:>13}  "
              f"{spec.cleanup_policy:<9} {'yes' if full in existing else 'no'}")
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
    start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in md.partitions])
    serde = Serde(s.schema_registry_url)
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
                lines = [to_json(r) for r in events_of(*serde.decode(msg.value()))]  # a TickBatch: its ticks
            except (SerdeError, ValueError) as e:
                lines = [json.dumps({"undecodable": str(e), "partition": msg.partition(), "offset": msg.offset()})]
            if args.count is not None:
                lines = lines[:args.count - seen]
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
            seen += len(lines)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        consumer.close()
    return 0

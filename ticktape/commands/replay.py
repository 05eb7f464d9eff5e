"""`ticktape replay`: re-publish a time range of a topic, a CSV file or a database table
(see ``producers/replay.py`` for the exact rules).

    ticktape replay --topic md.ticks --from 2024-01-02T14:30 --to 2024-01-02T15:00 \\
                    --to-topic replay.md.ticks --speed 10
    TOPIC_PREFIX=r1. ticktape replay --source db --table bars --interval 1m --from … --to …

The target is ``--to-topic`` (a full topic name), else the source's catalog topic under
``TOPIC_PREFIX``; replaying a topic into itself is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

from ..cli import UsageError
from ..config import settings
from ..kafka_clients import check_reachable
from .produce import parse_speed, parse_time

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser("replay", help="re-publish a time range of a topic, a CSV file or a table")
    p.add_argument("--source", choices=("topic", "csv", "db"), default="topic", help="default: topic")
    p.add_argument("--topic", help="source topic, full name (--source topic), e.g. md.ticks")
    p.add_argument("--input", help="CSV of ticks or bars (--source csv)")
    p.add_argument("--table", choices=("ticks", "bars"), default="ticks", help="--source db: default ticks")
    p.add_argument("--interval", default="1m", help="bar interval of a bars CSV/table (default 1m)")
    p.add_argument("--from", dest="start", type=parse_time, help="first event time, ISO-8601 (inclusive)")
    p.add_argument("--to", dest="end", type=parse_time, help="last event time, ISO-8601 (inclusive)")
    p.add_argument("--symbols", help="only these symbols (comma/space separated)")
    p.add_argument("--speed", type=parse_speed, default=None, help="N x the original pace, or max (default max)")
    p.add_argument("--to-topic", help="target topic, full name (default: the catalog topic under TOPIC_PREFIX)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_symbols(text: str | None) -> set[str] | None:
    if text is None:
        return None
    symbols = {s for s in text.replace(",", " ").split() if s}
    if not symbols:
        raise UsageError("--symbols is empty")
    return symbols


def run(args) -> int:
    from producers.base import EventPublisher, StopFlag
    from producers.replay import Progress, encode_events, publish, read_csv, read_db, read_topic
    from ticktape import kafka_clients
    from ticktape.core.intervals import interval_seconds
    from ticktape.serde import Serde

    s = settings()
    if args.start is not None and args.end is not None and args.end < args.start:
        raise UsageError("--to is before --from")
    try:
        interval_seconds(args.interval)
    except ValueError as e:
        raise UsageError(str(e)) from None
    symbols = parse_symbols(args.symbols)
    events: Iterable[dict]  # a file's list, a table's cursor, or a filter of either
    if args.source == "topic":
        if not args.topic:
            raise UsageError("--source topic needs --topic")
        base = _catalog_name(args.topic)
    elif args.source == "csv":
        if not args.input:
            raise UsageError("--source csv needs --input FILE")
        kind, events = read_csv(args.input, args.interval)
        base = "md.ticks" if kind == "tick" else f"md.bars.{args.interval}"
    else:
        kind = "tick" if args.table == "ticks" else "bar"
        base = "md.ticks" if kind == "tick" else f"md.bars.{args.interval}"
    check_reachable(s)  # after the arguments' checks, before the first broker call
    to_topic = args.to_topic or (s.topic(base) if base else None)
    if to_topic is None:
        raise UsageError(f"{args.topic} is not a catalog topic: give --to-topic")
    if args.source == "topic" and to_topic == args.topic:
        raise UsageError(f"replaying {args.topic} into itself: give --to-topic or set TOPIC_PREFIX")
    if args.source == "topic":
        try:
            in_partitions = len(kafka_clients.topic_metadata(s, args.topic).partitions)
        except KeyError:
            raise UsageError(f"topic {args.topic} does not exist") from None
    try:
        spec = kafka_clients.topic_spec(to_topic)
    except KeyError:
        spec = None
    if spec is not None and to_topic.endswith(spec.name):
        # a catalog topic under some prefix: create it with the catalog's configs if missing
        kafka_clients.ensure_topics(replace(s, topic_prefix=to_topic[: -len(spec.name)]), [spec.name])
    try:
        out_partitions = len(kafka_clients.topic_metadata(s, to_topic).partitions)
    except KeyError:
        raise UsageError(f"target topic {to_topic} does not exist (create it, or use a catalog name)") from None

    stop = StopFlag()
    if args.source == "topic":
        records = read_topic(s, args.topic, args.start, args.end, symbols, stop)
        same = in_partitions == out_partitions
    else:
        if args.source == "db":
            events = read_db(s, args.table, args.interval, args.start, args.end, symbols)
        else:
            events = (
                e
                for e in events
                if (symbols is None or e["symbol"] in symbols)
                and (args.start is None or e["ts"] >= args.start)
                and (args.end is None or e["ts"] <= args.end)
            )
        records = encode_events(events, kind, out_partitions, Serde(s.schema_registry_url), to_topic)
        same = True
    pub = EventPublisher(s, stage="replay")
    n = publish(
        records,
        pub,
        to_topic,
        args.speed,
        stop,
        Progress(args.start, args.end, not args.quiet),
        same_partitions=same,
        partitions=out_partitions,
    )
    log.info("replay: %d events to %s", n, to_topic)
    print(f"replayed {n} events to {to_topic}")
    return 0


def _catalog_name(topic: str) -> str | None:
    from ticktape import kafka_clients

    try:
        return kafka_clients.topic_spec(topic).name
    except KeyError:
        return None

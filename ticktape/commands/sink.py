"""`ticktape sink postgres|redis [--topics ...]`: the long-running sink processes.

SIGTERM/SIGINT: the current batch is written and committed, then the process exits 0.
At start, a broker, database or Redis that does not answer is one line and exit 2; once
running, outages are retried (``sinks/runner.py``).  An error no retry fixes stops the
sink with one line and exit code 3.  The main job starts them as
``python -m ticktape.cli sink postgres``.
"""

from __future__ import annotations

import logging
import signal

from .. import metrics
from ..cli import UsageError
from ..config import ConfigError, settings
from ..kafka_clients import check_reachable

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser("sink", help="write topics of record to PostgreSQL, or latest state to Redis")
    ssub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    for target, what in (
        ("postgres", "every topic of record into its table"),
        ("redis", "the latest tick/bar/indicators/prediction/position per symbol"),
    ):
        sp = ssub.add_parser(target, help=f"write {what}")
        sp.add_argument(
            "--topics",
            nargs="+",
            metavar="TOPIC",
            help="catalog topic names (without the run prefix); default: all of this sink's",
        )
        sp.set_defaults(func=run)


def run(args) -> int:
    from sinks import redis_sink, schema
    from sinks.runner import SinkRunner
    from sinks.tables import topics_of_record

    s = check_reachable(settings())
    allowed = topics_of_record() if args.target == "postgres" else redis_sink.topics()
    topics = args.topics or allowed
    unknown = [t for t in topics if t not in allowed]
    if unknown:
        raise UsageError(
            f"sink {args.target}: not a topic it writes: {', '.join(unknown)} (choose from {', '.join(allowed)})"
        )
    if args.target == "postgres":
        from sinks.postgres import PostgresWriter

        import psycopg

        try:
            schema.migrate(s)
        except psycopg.Error as e:
            raise ConfigError(
                f"sink postgres: database not ready: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            ) from None
        writer: PostgresWriter | redis_sink.RedisWriter = PostgresWriter(s)
    else:
        writer = redis_sink.RedisWriter(s)
        writer.check()
    runner = SinkRunner(s, writer, topics)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop())
    port = metrics.serve(f"sink-{args.target}", s)
    log.info("sink %s: %d topics, group %s, /metrics on %s", args.target, len(topics), runner.group, port or "-")
    if args.target != "postgres":
        return runner.run()
    from sinks.job_health import JobHealthExporter

    jobs = JobHealthExporter(s.database_url)  # TimescaleDB's background jobs, as metrics
    jobs.start()
    try:
        return runner.run()
    finally:
        jobs.stop()

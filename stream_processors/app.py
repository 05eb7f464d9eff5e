"""The Faust app of the stream processors and the worker that runs it.

Each stage is a module ``stream_processors/<stage>.py`` with ``attach(app, settings)``
that adds its agents (and tables) to the one app; ``STAGES`` lists them in flow order.
State lives in Faust tables in memory, rebuilt from their changelog topics on start.
"""
from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
import logging

import faust

from ticktape import kafka_clients, metrics
from ticktape.config import ConfigError, Settings

log = logging.getLogger(__name__)

STAGES = ["bars", "indicators", "predict", "strategy", "risk", "execution", "portfolio"]


def build_app(s: Settings) -> faust.App:
    ticks = kafka_clients.topic_spec("md.ticks")
    app = faust.App(
        s.group("worker"),
        **kafka_clients.faust_broker_settings(s),
        store="memory://",
        datadir=str(Path(s.home) / "faust"),  # not the working directory
        # tables' changelogs are co-partitioned with the symbol-keyed topics
        topic_partitions=ticks.partitions,
        topic_replication_factor=ticks.replication_factor,
        topic_disable_leader=True,
        broker_session_timeout=s.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,  # /metrics is served by ticktape.metrics
        autodiscover=False,
    )
    for stage in STAGES:
        try:
            module = importlib.import_module(f"stream_processors.{stage}")
        except ModuleNotFoundError as e:
            if e.name == f"stream_processors.{stage}":
                continue  # stage not built yet
            raise
        module.attach(app, s)
    return app


def agent(app: faust.App, channel, *, name: str):
    """``app.agent`` whose crash stops the worker with exit code 1.

    Faust would otherwise restart the agent or leave the worker hanging; a restarted
    worker resumes from the committed offsets and the tables' changelogs instead.
    """
    def decorate(fun):
        async def guarded(stream):
            try:
                await fun(stream)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.critical("agent %s crashed: %r; stopping the worker", name, exc, exc_info=exc)
                metrics.PROCESSING_ERRORS.labels(name).inc()
                await app.crash(exc)

        guarded.__name__ = guarded.__qualname__ = name
        guarded.__module__ = fun.__module__
        return app.agent(channel, name=name)(guarded)

    return decorate


def check_topics(s: Settings) -> None:
    """Every topic the worker uses must be in the catalog (e.g. one per bar interval)."""
    for interval in s.interval_list:
        try:
            kafka_clients.topic_spec(f"md.bars.{interval}")
        except KeyError as e:
            raise ConfigError(f"BAR_INTERVALS has {interval}: {e.args[0]}") from None


def run_worker(s: Settings) -> int:
    """Run every stage until SIGTERM/SIGINT (exit 0) or a crash (exit 1)."""
    check_topics(s)
    kafka_clients.ensure_topics(s)  # never rely on broker auto-creation
    app = build_app(s)
    metrics.serve("worker", s)
    worker = faust.Worker(app, loglevel=s.log_level, override_logging=False, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    return 0

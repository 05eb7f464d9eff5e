"""Every Prometheus metric of the project, in one place (SPEC §8).

Names carry the ``ticktape_`` prefix; labels are ``stage`` (producer/bars/indicators/
predict/strategy/risk/execution/portfolio/sink), ``topic``, and ``symbol`` only where
the symbol set is bounded by configuration.  Each process calls ``serve(role)``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, make_wsgi_app

from .config import Settings

log = logging.getLogger(__name__)

# Default /metrics port per role, so the local Prometheus knows where to scrape.
ROLE_PORTS = {
    "producer": 9101,
    "worker": 9102,
    "sink-postgres": 9103,
    "sink-redis": 9104,
    "run": 9100,
    "websocket": 9105,
    "yahoo": 9106,
}

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# --- flow -----------------------------------------------------------------------------
EVENTS_IN = Counter("ticktape_events_in", "events consumed", ["stage", "topic"])
EVENTS_OUT = Counter("ticktape_events_out", "events published", ["stage", "topic"])
EVENT_LATENCY = Histogram(
    "ticktape_event_latency_seconds",
    "event time (bar: window end + grace) to processed, per stage",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
CONSUMER_LAG = Gauge("ticktape_consumer_lag", "messages behind the high watermark", ["group", "topic", "partition"])
LATE_TICKS = Counter("ticktape_late_ticks", "ticks later than the grace period", ["interval"])
BARS_CLOSED = Counter("ticktape_bars_closed", "bars closed", ["interval"])
DLQ_MESSAGES = Counter("ticktape_dlq_messages", "messages sent to a dead-letter topic", ["stage", "topic"])
PROCESSING_ERRORS = Counter("ticktape_processing_errors", "errors while processing", ["stage"])

# --- sinks ------------------------------------------------------------------------------
SINK_ROWS = Counter("ticktape_sink_rows", "rows written (new, after dedupe)", ["sink", "table"])
SINK_BATCHES = Counter("ticktape_sink_batches", "batches committed", ["sink", "table"])
SINK_BATCH_LATENCY = Histogram(
    "ticktape_sink_batch_seconds", "time to write and commit one batch", ["sink"], buckets=LATENCY_BUCKETS
)
SINK_ERRORS = Counter("ticktape_sink_errors", "failed write attempts", ["sink"])
SINK_HEALTHY = Gauge("ticktape_sink_healthy", "1 when the sink's last write succeeded", ["sink"])
# TimescaleDB background jobs (compression, retention, aggregate refresh), read by the
# PostgreSQL sink from timescaledb_information; absent on plain PostgreSQL
TSDB_JOB_FAILED = Gauge(
    "ticktape_timescaledb_job_failed", "1 when the job's last run failed", ["job_id", "proc", "hypertable"]
)
TSDB_JOB_FAILURES = Gauge(
    "ticktape_timescaledb_job_failures", "failed runs of the job since it was created", ["job_id", "proc", "hypertable"]
)

# --- trading ----------------------------------------------------------------------------
RISK_REJECTIONS = Counter("ticktape_risk_rejections", "orders the risk engine rejected", ["reason"])
ORDERS = Counter("ticktape_orders", "orders approved by the risk engine", ["account", "side"])
FILLS = Counter("ticktape_fills", "paper fills", ["account", "side"])
EQUITY = Gauge("ticktape_equity", "account equity: cash + market value", ["account"])
PNL = Gauge("ticktape_pnl", "account PnL by kind (realized, unrealized)", ["account", "kind"])
GROSS_EXPOSURE = Gauge("ticktape_gross_exposure", "sum of |market value| over positions", ["account"])
POSITIONS_OPEN = Gauge("ticktape_positions_open", "symbols with a non-zero position", ["account"])

# --- model (predict agent) ----------------------------------------------------------------
INFERENCE_LATENCY = Histogram(
    "ticktape_inference_latency_seconds",
    "model scoring time of the batch a prediction was in (features to p_up), per prediction",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
PREDICTIONS = Counter("ticktape_predictions", "predictions emitted", ["model"])
PREDICTIONS_SKIPPED = Counter(
    "ticktape_predictions_skipped",
    "indicator sets not scored (missing_features: lookback not filled; no_model: no active model)",
    ["reason"],
)
MODEL_ACTIVE = Gauge("ticktape_model_active", "1 for the model version this process scores with", ["model", "version"])
MODEL_REFUSALS = Counter(
    "ticktape_model_refusals", "announced models refused (feature list mismatch, bad artifact)", ["model"]
)

# --- risk -------------------------------------------------------------------------------
RISK_PENDING = Gauge("ticktape_risk_pending", "events the risk stage buffers for the ordering rule", ["account"])
RISK_IDLE_SYMBOLS = Gauge(
    "ticktape_risk_idle_symbols", "universe symbols more than RISK_IDLE_MS behind (they hold nothing back)", ["account"]
)
RISK_LATE = Counter(
    "ticktape_risk_late_events", "account-stream events that came after later ones were processed", ["account", "kind"]
)
RISK_FORCED = Counter(
    "ticktape_risk_forced_releases",
    "events processed without waiting because the buffer reached RISK_MAX_PENDING",
    ["account"],
)
KILL_SWITCH = Gauge("ticktape_kill_switch", "1 when the account is HALTED", ["account"])

# --- market-data sources (label source: websocket:<provider>, yahoo) ----------------------
SOURCE_MESSAGES = Counter(
    "ticktape_source_messages",
    "provider messages received, by kind (trade/quote/bar/control/ignored/unknown/malformed; yahoo: rows)",
    ["source", "kind"],
)
HEARTBEATS = Counter("ticktape_heartbeats", "Heartbeats sent to quiet md.ticks partitions", ["stage"])
SOURCE_EVENTS = Counter("ticktape_source_events", "events handed to the producer", ["source"])
SOURCE_RECONNECTS = Counter("ticktape_source_reconnects", "reconnections to the provider", ["source"])
SOURCE_GAPS = Counter(
    "ticktape_source_gaps", "per-symbol streams that may have missed data (after a reconnect)", ["source"]
)
SOURCE_DUPLICATES = Counter("ticktape_source_duplicates", "events received again and not republished", ["source"])
SOURCE_DROPS = Counter(
    "ticktape_source_drops", "events dropped because Kafka was slower (drop policy only)", ["source"]
)
SOURCE_ERRORS = Counter("ticktape_source_errors", "provider errors and failed requests", ["source"])
SOURCE_LATENCY = Histogram(
    "ticktape_source_latency_seconds", "event time to handed to the producer", ["source"], buckets=LATENCY_BUCKETS
)

# --- process ----------------------------------------------------------------------------
RECOVERY_REMAINING = Gauge(
    "ticktape_recovery_remaining", "changelog records the worker still reads to restore its tables (0: none)"
)
PROCESS_UP = Gauge("ticktape_process_up", "1 while the process runs", ["role"])
BUILD = Info("ticktape_build", "version of the running code")
STRATEGY = Info("ticktape_strategy", "the strategy stage's STRATEGY, STRATEGY_PARAMS (JSON) and source sha256")
# who answers on this port: readers (the live line, `ticktape status`, Prometheus' alert)
# compare it with the process they started, so a port another pipeline holds is not read as theirs
PROCESS = Info("ticktape_process", "role, pid and TICKTAPE_HOME of the process serving this /metrics")


def serve(role: str, s: Settings) -> int:
    """Start this process's /metrics and /health endpoint; returns the port (0 = disabled on clash)."""
    port = s.metrics_port or ROLE_PORTS.get(role, 0)
    try:
        server = make_server(s.metrics_host, port, _app(role, port), _Server, handler_class=_QuietHandler)
    except OSError as e:
        log.warning("metrics port %s for %s unavailable (%s); /metrics disabled", port, role, e)
        return 0
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    from . import __version__

    BUILD.info({"version": __version__})
    PROCESS.info({"role": role, "pid": str(os.getpid()), "home": str(Path(s.home).resolve())})
    PROCESS_UP.labels(role).set(1)
    return port


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # a scrape every few seconds is no news
        pass


def _samples() -> dict[str, list[tuple[dict[str, str], float]]]:
    """This process's samples, in the form ``ticktape.scrape`` reads them from /metrics."""
    out: dict[str, list] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _app(role: str, port: int):
    """/health: this process's stages as `ticktape status --json` reports them (rates over
    the time since the previous /health request, or since start); anything else: /metrics."""
    metrics_app = make_wsgi_app()
    lock = threading.Lock()
    Samples = dict[str, list[tuple[dict[str, str], float]]]
    prev: list[tuple[float, Samples]] = [(time.monotonic(), {})]  # one sample kept: the previous request's

    def health() -> dict:
        from dataclasses import asdict

        from .commands.status import overall_score, stage_rows

        with lock:
            now, after = time.monotonic(), _samples()
            then, before = prev[0]
            seconds = max(1e-3, now - then)
            rows = stage_rows({role: port}, {role: before}, {role: after}, seconds)
            prev[0] = (now, after)
        who = dict(_first(after, "ticktape_process_info"))
        return {
            "up": True,
            "role": role,
            "pid": os.getpid(),
            "home": who.get("home"),
            "version": dict(_first(after, "ticktape_build_info")).get("version"),
            "health": overall_score(rows),
            "sampled_s": round(seconds, 3),
            "stages": [asdict(r) for r in rows],
        }

    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/health":
            return metrics_app(environ, start_response)
        body = json.dumps(health()).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def _first(samples, name: str) -> dict[str, str]:
    found = samples.get(name) or [({}, 0.0)]
    return found[0][0]

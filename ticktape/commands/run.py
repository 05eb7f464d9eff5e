"""`ticktape run`: the main job on the local stack.

Starts the stack (broker, PostgreSQL, Redis, and Prometheus when installed), then the
pipeline as separate processes — the Faust worker, the PostgreSQL and Redis sinks, and
the simulator — and shows a one-line live summary read from their /metrics.  On
``--duration`` or Ctrl-C it stops the source first, lets the pipeline drain, then
stops the rest; the stack stays up (`ticktape stack down` takes it down).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ..config import run_defaults, set_in_environment, settings
from ..scrape import foreign, scrape, total
from ..stack import free_port
from .models import ensure_model
from .stack import bring_up
from .status import remove_run_files, write_run_files

DRAIN_SECONDS = 60.0  # longest wait for the pipeline to write what the source sent
DRAIN_QUIET_S = 3.0  # no new rows for this long: drained (a busy sink writes every SINK_MAX_LATENCY_MS)


@dataclass
class Child:
    role: str  # metrics role and log name
    argv: list[str]
    proc: subprocess.Popen | None = None
    port: int = field(default=0)

    def start(self, logs: Path, env: dict) -> None:
        # a free port per run, recorded in run.json: a second checkout's pipeline (or a test
        # run) beside this one never shares a /metrics port with it
        self.port = free_port()
        log = open(logs / f"{self.role}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ticktape.cli", *self.argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env | {"METRICS_PORT": str(self.port)},
            start_new_session=True,
        )  # Ctrl-C reaches us only; we stop children in order
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        if not self.alive():
            return self.proc.returncode if self.proc else None
        assert self.proc is not None  # alive(): it has a process
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def register(sub):
    p = sub.add_parser("run", help="the main job: local stack + simulator + the whole pipeline")
    p.add_argument("--duration", type=float, default=0, help="stop after S seconds (0 = until Ctrl-C)")
    p.add_argument("--rate", type=float, help="simulator ticks per second (SIM_TICK_RATE)")
    p.add_argument(
        "--no-bootstrap-model",
        dest="bootstrap_model",
        action="store_false",
        help="do not train a model on simulated history when none is active",
    )
    p.set_defaults(func=run)


class Summary:
    """Live figures from the children's /metrics: ticks/s in, bars, rows, lag."""

    def __init__(self, children: list[Child], home: str):
        self.children = {c.role: c for c in children}
        self.home = home
        self.prev: tuple[float, float] | None = None
        self.last: dict[str, dict] = {}
        self.foreign: dict[str, str] = {}  # role -> who answers on its port instead

    def _scrape(self, role: str) -> dict:
        """A process's metrics, or its last ones once it has stopped; another process
        answering on its port is not read."""
        child = self.children[role]
        samples = scrape(child.port)
        why = foreign(samples, self.home, child.proc.pid if child.proc else None) if samples else None
        if why:
            self.foreign[role] = f"{role} /metrics port {child.port} {why}"
        elif samples:
            self.foreign.pop(role, None)
            self.last[role] = samples
        return self.last.get(role, {})

    def figures(self) -> dict[str, float]:
        prod = self._scrape("producer")
        work = self._scrape("worker")
        sink = self._scrape("sink-postgres")
        now = time.monotonic()
        ticks = total(prod, "ticktape_events_out_total", topic="md.ticks")
        rate = 0.0
        if self.prev is not None and now > self.prev[0]:
            rate = max(0.0, (ticks - self.prev[1]) / (now - self.prev[0]))
        self.prev = (now, ticks)
        return {
            "ticks": ticks,
            "ticks_per_s": rate,
            "bars": total(work, "ticktape_bars_closed_total"),
            "late": total(work, "ticktape_late_ticks_total"),
            "predictions": total(work, "ticktape_predictions_total"),
            "orders": total(work, "ticktape_orders_total"),
            "fills": total(work, "ticktape_fills_total"),
            "rows": total(sink, "ticktape_sink_rows_total"),
            "lag": total(sink, "ticktape_consumer_lag") + total(work, "ticktape_consumer_lag"),
            "dlq": total(work, "ticktape_dlq_messages_total") + total(sink, "ticktape_dlq_messages_total"),
        }

    def line(self, elapsed: float) -> str:
        f = self.figures()
        line = (
            f"[{elapsed:6.0f}s] ticks {f['ticks']:>9,.0f} ({f['ticks_per_s']:>7,.0f}/s)  "
            f"bars {f['bars']:>7,.0f}  late {f['late']:>4,.0f}  pred {f['predictions']:>6,.0f}  "
            f"orders {f['orders']:>4,.0f}  fills {f['fills']:>4,.0f}  rows {f['rows']:>9,.0f}  "
            f"lag {f['lag']:>6,.0f}  dlq {f['dlq']:>3,.0f}"
        )
        recovering = total(self.last.get("worker", {}), "ticktape_recovery_remaining")
        if recovering:
            line += f"  [worker restoring its state: {recovering:,.0f} changelog records to go]"
        return line + "".join(f"  [{why}]" for why in self.foreign.values())

    def rows_line(self) -> str:
        """The rows the PostgreSQL sink wrote during this run, per table."""
        from sinks.tables import TABLE_OF_EVENT

        sink = self.last.get("sink-postgres", {})
        return "rows written this run: " + "  ".join(
            f"{t} {total(sink, 'ticktape_sink_rows_total', table=t):,.0f}" for t in TABLE_OF_EVENT.values()
        )


def run(args) -> int:
    from ..api import load_indicators, load_strategy

    spec = load_strategy(settings())  # a bad STRATEGY / STRATEGY_PARAMS: one line, exit 2, before anything starts
    indicators = load_indicators(settings())  # a bad INDICATORS: the same
    bring_up(with_prometheus=True)
    s = settings()
    logs = Path(s.home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "DATABASE_URL": s.database_url,
            "REDIS_URL": s.redis_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name, value in run_defaults().items():  # config/run.env: the main job's settings
        if name not in set_in_environment():
            env[name] = value
    if args.bootstrap_model and spec.cls.input_kind() == "prediction":  # a strategy of bars needs no model
        ensure_model(env["STRATEGY_INTERVAL"])
    producer_args = ["produce", "sim"] + (["--rate", str(args.rate)] if args.rate else [])
    pipeline = [
        Child("worker", ["process", "worker"]),
        Child("sink-postgres", ["sink", "postgres"]),
        Child("sink-redis", ["sink", "redis"]),
    ]
    source = Child("producer", producer_args)
    for child in pipeline + [source]:
        child.start(logs, env)
    # cast: every child was started just above, so each has its process
    write_run_files(
        s.home,
        [(c.role, c.port, cast(subprocess.Popen, c.proc).pid) for c in pipeline + [source]],
        spec.record(),
        [i.record() for i in indicators],
    )

    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    summary = Summary(pipeline + [source], s.home)
    tty = sys.stdout.isatty()
    t0 = time.monotonic()
    print(f"ticktape: pipeline running (logs in {logs}), strategy {spec.path}; Ctrl-C stops it", flush=True)
    failed = None
    while not stop["now"]:
        time.sleep(1.0)
        elapsed = time.monotonic() - t0
        dead = [c for c in pipeline + [source] if not c.alive()]
        if dead:
            failed = dead[0]
            break
        line = summary.line(elapsed)
        if tty:
            print("\r" + line, end="", flush=True)
        elif int(elapsed) % 5 == 0:
            print(line, flush=True)
        if args.duration and elapsed >= args.duration:
            break
    if tty:
        print()
    print("ticktape: stopping the source, draining the pipeline ...", flush=True)
    source.stop()
    if not _drain(summary.figures):
        print(f"ticktape: rows still coming after {DRAIN_SECONDS:.0f} s; the next run writes the rest", flush=True)
    print(summary.line(time.monotonic() - t0), flush=True)
    summary.figures()  # the sink's last counts before it stops
    codes = {c.role: c.stop() for c in pipeline}
    remove_run_files(s.home)
    print(summary.rows_line(), flush=True)
    if failed is not None:
        assert failed.proc is not None  # it was started, then found dead
        print(
            f"ticktape: {failed.role} exited with code {failed.proc.returncode}; see {logs / (failed.role + '.log')}",
            file=sys.stderr,
        )
        return 1
    bad = {role: code for role, code in codes.items() if code not in (0, -signal.SIGTERM)}
    if bad:
        print(f"ticktape: unclean exit: {bad}; see {logs}", file=sys.stderr)
        return 1
    print("ticktape: stopped; the local stack is still up (ticktape stack down / make stop)")
    return 0


def _drain(figures: Callable[[], dict[str, float]], clock=time.monotonic, sleep=time.sleep) -> bool:
    """Wait until the pipeline has written what the source sent: no new rows for
    DRAIN_QUIET_S, or none since the last look with no lag left.  False after
    DRAIN_SECONDS with rows still coming (the rest is written by the next run: nothing
    is committed before it is written)."""
    deadline = clock() + DRAIN_SECONDS
    last_rows, quiet_since = None, clock()
    while clock() < deadline:
        f, now = figures(), clock()
        if f["rows"] != last_rows:
            last_rows, quiet_since = f["rows"], now
        elif f["lag"] == 0 or now - quiet_since >= DRAIN_QUIET_S:
            return True
        sleep(1.0)
    return False

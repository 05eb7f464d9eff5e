"""`ticktape status`: a terminal health view of the running pipeline (``--json`` too).

It samples every process of the main job twice, ``--interval`` seconds apart: the
processes come from ``TICKTAPE_HOME/run.json`` (written by `ticktape run`), else the
default roles at their ROLE_PORTS.  A port whose ``ticktape_process_info`` names another
pid (run.json) or another TICKTAPE_HOME is another pipeline's: that process counts as
down, with a note.  A stage's lag is its consumer group's (committed offsets against
high watermarks, from the Kafka admin API) over the topics the stage reads: the worker's
stages share the worker's group, each sink has its own, the producer has none; without
the broker, the ``ticktape_consumer_lag`` gauges the sinks export.

Per stage: events in/out per second, lag, freshness (mean event-time -> processed
latency of the events the stage handled during the sample), errors during the sample
(processing errors, dead letters, failed sink writes), and a score.

Health score (0-100), per stage:
    0   when its process cannot be scraped; else 100, minus
    40  when it handled no event during the sample (idle or stalled),
    20  when its lag exceeds LAG_WARN messages (40 above LAG_BAD),
    20  when its freshness exceeds FRESH_WARN seconds (40 above FRESH_BAD),
    30  when it had any error during the sample,
    floored at 0.  The pipeline's score is the mean of the stage scores averaged with
    their minimum, so one dead stage costs at least half: round((mean + min) / 2).
No process reachable: score 0 and exit code 1.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import metrics
from ..cli import UsageError
from ..config import settings
from ..scrape import Samples, foreign, scrape, total

RUN_FILE = "run.json"
TARGETS_FILE = "prometheus-targets.json"  # file_sd of prometheus.local.yml
# The main job's processes when no run file says otherwise (role -> consumer group stage).
DEFAULT_ROLES = ("producer", "worker", "sink-postgres", "sink-redis")
LAG_WARN, LAG_BAD = 1_000, 10_000
FRESH_WARN, FRESH_BAD = 5.0, 30.0


@dataclass
class StageStatus:
    stage: str
    process: str  # role:port
    up: bool
    in_per_s: float | None = None
    out_per_s: float | None = None
    lag: float | None = None
    freshness_s: float | None = None
    errors: float = 0.0
    score: int = 0


def register(sub):
    p = sub.add_parser("status", help="health of the running pipeline (rate, lag, freshness, errors)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between the two samples rates are computed from (default 2)",
    )
    p.set_defaults(func=run)


# -- pure part: two samples -> stage rows -> scores ----------------------------------------
def stage_score(st: StageStatus) -> int:
    if not st.up:
        return 0
    score = 100
    if not (st.in_per_s or st.out_per_s):
        score -= 40
    if st.lag is not None and st.lag > LAG_WARN:
        score -= 40 if st.lag > LAG_BAD else 20
    if st.freshness_s is not None and st.freshness_s > FRESH_WARN:
        score -= 40 if st.freshness_s > FRESH_BAD else 20
    if st.errors > 0:
        score -= 30
    return max(0, score)


def overall_score(stages: list[StageStatus]) -> int:
    if not stages or not any(st.up for st in stages):
        return 0
    scores = [st.score for st in stages]
    return round((sum(scores) / len(scores) + min(scores)) / 2)


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    # a restarted process resets its counters: count from zero then
    b, a = total(before, name, **labels), total(after, name, **labels)
    return a - b if a >= b else a


def _stages_of(samples: Samples) -> list[str]:
    """Stage label values a process exports, in flow order where known."""
    found = {
        lbl["stage"]
        for name in ("ticktape_events_in_total", "ticktape_events_out_total")
        for lbl, _ in samples.get(name, ())
        if "stage" in lbl
    }
    order = ["producer", "bars", "indicators", "predict", "strategy", "risk", "execution", "portfolio"]
    return sorted(found, key=lambda s: (order.index(s) if s in order else len(order), s))


def stage_rows(
    processes: dict[str, int],
    before: dict[str, Samples],
    after: dict[str, Samples],
    seconds: float,
    lags: dict[str, float] | None = None,
) -> list[StageStatus]:
    """Stage rows from two samples of each process (role -> samples), ``seconds`` apart.

    ``lags``: consumer-group lag per stage from the broker; stages missing there use the
    sum of their process's ``ticktape_consumer_lag`` gauges.
    """
    lags = lags or {}
    rows = []
    for role, port in processes.items():
        a = after.get(role) or {}
        where = f"{role}:{port}"
        if not a:
            rows.append(StageStatus(stage=role, process=where, up=False))
            continue
        b = before.get(role) or {}
        stages = [role] if role.startswith("sink-") else (_stages_of(a) or [role])
        for stage in stages:
            n_in = _delta(b, a, "ticktape_events_in_total", stage=stage)
            n_out = _delta(b, a, "ticktape_events_out_total", stage=stage)
            n_lat = _delta(b, a, "ticktape_event_latency_seconds_count", stage=stage)
            sum_lat = _delta(b, a, "ticktape_event_latency_seconds_sum", stage=stage)
            errors = _delta(b, a, "ticktape_processing_errors_total", stage=stage) + _delta(
                b, a, "ticktape_dlq_messages_total", stage=stage
            )
            lag = lags.get(stage)
            if role.startswith("sink-"):
                errors += _delta(b, a, "ticktape_sink_errors_total", sink=role.removeprefix("sink-"))
            group, topics = consumed(stage, a)
            gauges = [
                v
                for lbl, v in a.get("ticktape_consumer_lag", ())
                if group and lbl.get("group") == f"ticktape.{group}" and (topics is None or lbl.get("topic") in topics)
            ]
            if lag is None and gauges:
                lag = sum(gauges)
            st = StageStatus(
                stage=stage,
                process=where,
                up=True,
                in_per_s=n_in / seconds if "ticktape_events_in_total" in a and stage != "producer" else None,
                out_per_s=n_out / seconds if not role.startswith("sink-") else None,
                lag=lag,
                freshness_s=sum_lat / n_lat if n_lat > 0 else None,
                errors=errors,
            )
            st.score = stage_score(st)
            rows.append(st)
    return rows


# -- I/O -------------------------------------------------------------------------------
def write_run_files(
    home, processes: list[tuple[str, int, int]], strategy: dict | None = None, indicators: list[dict] | None = None
) -> None:
    """Record the main job's (role, metrics port, pid) in ``home``: run.json for this
    command (with the strategy it trades: ``StrategySpec.record()``, and its user
    indicators: ``IndicatorSpec.record()`` each), and the
    file-discovery targets the local Prometheus scrapes (prometheus/prometheus.local.yml),
    so it scrapes exactly the processes that run."""
    home = Path(home)
    doc: dict[str, object] = {"processes": [{"role": r, "port": port, "pid": pid} for r, port, pid in processes]}
    if strategy is not None:
        doc["strategy"] = strategy
    if indicators:
        doc["indicators"] = indicators
    # the pid lets Prometheus' ForeignProcess alert tell whether the port answers for that process
    targets = [{"targets": [f"127.0.0.1:{port}"], "labels": {"job": r, "pid": str(pid)}} for r, port, pid in processes]
    for name, content in ((RUN_FILE, doc), (TARGETS_FILE, targets)):
        tmp = home / (name + ".tmp")
        tmp.write_text(json.dumps(content, indent=2) + "\n")
        tmp.replace(home / name)  # atomic: Prometheus never reads half a file


def remove_run_files(home) -> None:
    for name in (RUN_FILE, TARGETS_FILE):
        (Path(home) / name).unlink(missing_ok=True)


def processes_of(home) -> dict[str, tuple[int, int | None]]:
    """role -> (/metrics port, pid) of the main job's processes: run.json, else the
    default roles at their default ports (pid unknown)."""
    path = Path(home) / RUN_FILE
    try:
        doc = json.loads(path.read_text())
        return {p["role"]: (int(p["port"]), int(p["pid"])) for p in doc["processes"]}
    except FileNotFoundError:
        return {role: (metrics.ROLE_PORTS[role], None) for role in DEFAULT_ROLES}
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not a run file ({e!r}); remove it or restart `ticktape run`") from None


def consumed(stage: str, samples: Samples) -> tuple[str | None, set[str] | None]:
    """The consumer group (without prefix) a stage reads in and the topics it reads there
    (None = every topic of the group): a sink reads in its own group; the worker's stages
    share the worker's group, each reading the topics its ``ticktape_events_in`` names; the
    producer reads nothing."""
    if stage.startswith("sink-"):
        return stage, None
    if stage == "producer":
        return None, None
    return "worker", {
        lbl["topic"]
        for lbl, _ in samples.get("ticktape_events_in_total", ())
        if lbl.get("stage") == stage and "topic" in lbl
    }


def broker_lags(s, wanted: dict[str, tuple[str | None, set[str] | None]], timeout: float = 3.0) -> dict[str, float]:
    """Committed-offset lag per stage (``wanted``: stage -> ``consumed``): its group's lag
    summed over the partitions of the topics the stage reads ({} when the broker does not answer)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

    from .. import kafka_clients

    groups = {group for group, _ in wanted.values() if group}
    if not groups or not s.kafka_bootstrap_servers:
        return {}
    lag_of: dict[str, dict[str, float]] = {}  # group -> catalog topic -> lag
    try:
        adm = kafka_clients.admin(s)
        probe = kafka_clients.consumer(s, s.group("status"))  # never subscribes: joins no group
        try:
            for name in sorted(groups):
                group = s.group(name)
                fut = adm.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
                per_topic = lag_of.setdefault(name, {})
                for tp in fut.result(timeout=timeout).topic_partitions or []:
                    if tp.offset >= 0:
                        _, high = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout)
                        topic = tp.topic.removeprefix(s.topic_prefix)
                        per_topic[topic] = per_topic.get(topic, 0.0) + max(0, high - tp.offset)
        finally:
            probe.close()
    except (KafkaException, TimeoutError, OSError):
        return {}
    return {
        stage: sum(lag for topic, lag in lag_of[group].items() if topics is None or topic in topics)
        for stage, (group, topics) in wanted.items()
        if group in lag_of
    }


def own_samples(home, processes: dict[str, tuple[int, int | None]]) -> tuple[dict[str, Samples], dict[str, str]]:
    """One scrape of each process: role -> samples ({} when down or not ours), and
    role -> why a port's answer is not from this home's process."""
    samples, notes = {}, {}
    for role, (port, pid) in processes.items():
        got = scrape(port)
        why = foreign(got, home, pid) if got else None
        if why:
            notes[role] = f"port {port} {why}"
        samples[role] = {} if why else got
    return samples, notes


def collect(s, interval: float, with_broker: bool = True) -> dict:
    processes = processes_of(s.home)
    ports = {role: port for role, (port, _) in processes.items()}
    before, _ = own_samples(s.home, processes)
    t0 = time.monotonic()
    time.sleep(interval)
    after, notes = own_samples(s.home, processes)
    seconds = max(1e-3, time.monotonic() - t0)
    rows = stage_rows(ports, before, after, seconds)
    if with_broker:
        wanted = {r.stage: consumed(r.stage, after[r.process.split(":")[0]]) for r in rows if r.up}
        lags = broker_lags(s, wanted)
        if lags:
            rows = stage_rows(ports, before, after, seconds, lags)
    procs = []
    for role, (port, pid) in processes.items():
        proc = {"role": role, "port": port, "pid": pid, "up": bool(after[role])}
        if role in notes:
            proc["note"] = notes[role]
        procs.append(proc)
    return {
        "health": overall_score(rows),
        "sampled_s": round(seconds, 3),
        "processes": procs,
        "stages": [asdict(r) for r in rows],
    }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render(report: dict) -> str:
    lines = [
        f"ticktape status: health {report['health']}/100 (sampled over {report['sampled_s']:.1f} s)",
        f"{'STAGE':<14} {'PROCESS':<20} {'UP':<4} {'IN/s':>9} {'OUT/s':>9} {'LAG':>9} "
        f"{'FRESH s':>8} {'ERRORS':>6} {'SCORE':>5}",
    ]
    for st in report["stages"]:
        lines.append(
            f"{st['stage']:<14} {st['process']:<20} {'up' if st['up'] else 'DOWN':<4} "
            f"{_fmt(st['in_per_s'], ',.1f'):>9} {_fmt(st['out_per_s'], ',.1f'):>9} "
            f"{_fmt(st['lag'], ',.0f'):>9} {_fmt(st['freshness_s'], '.2f'):>8} "
            f"{st['errors']:>6,.0f} {st['score']:>5}"
        )
    return "\n".join(lines)


def run(args) -> int:
    if not args.interval > 0:
        raise UsageError(f"--interval must be a positive number of seconds, not {args.interval:g}")
    report = collect(settings(), args.interval)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
        for proc in report["processes"]:
            if "note" in proc:
                print(f"{proc['role']}: not read: {proc['note']}", file=sys.stderr)
        if not any(p["up"] for p in report["processes"]):
            print("no ticktape process reachable: is `ticktape run` (make run) running?", file=sys.stderr)
    return 0 if any(p["up"] for p in report["processes"]) else 1

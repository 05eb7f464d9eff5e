"""Event-time latency (goal 2): at 5,000 ticks/s over 500 symbols, from a bar window's
close (window end + grace) to its Bar, IndicatorSet, Prediction and Order being
published — p50 and p99 per stage, from the worker's own histogram
``ticktape_event_latency_seconds{stage}``.

Set-up, in a fresh namespace (TOPIC_PREFIX), a scratch database and TICKTAPE_HOME: a
small model on 1 s bars is trained on simulated history and activated (announced on
the namespace's ml.models, as ``ticktape run`` bootstraps one); one worker runs every
stage with STRATEGY_INTERVAL=1s, so 1 s bars flow on to predictions and orders; the
simulator runs live-paced with the main job's batching (TICK_BATCH_MAX/TICK_BATCH_MS of
``ticktape run``).  Once the first order is out, a warm-up window and then each timed
window are measured: the difference of the histogram's cumulative buckets between the
window's start and end.  Quantiles interpolate linearly within a bucket, as
Prometheus' ``histogram_quantile`` does, so they are as coarse as the buckets
(…, 50, 100, 250 ms, …).

    python -m bench.bench_latency            # 500 symbols at 5,000 ticks/s, then 50 at 500; 30 s windows
    python -m bench.bench_latency --quick    # 50 symbols, 500 ticks/s, 5 s windows
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Figure, bench_main, repeat, services
from bench.processes import Process, drop, namespace, scratch_database, symbols
from ticktape import kafka_clients
from ticktape.config import run_defaults
from ticktape.scrape import scrape, total
from ticktape.stack import free_port

HISTOGRAM = "ticktape_event_latency_seconds"
STAGES = {"bars": "Bar", "indicators": "IndicatorSet", "predict": "Prediction", "risk": "Order"}
GOAL_MS = 100.0
# The local broker answers a waiting fetch only when its wait is over: each hop waits up
# to the fetch wait, so this run shortens it (at ~0.5 core of idle polling).
LATENCY_PROFILE = {"KAFKA_FETCH_MAX_WAIT_MS": "10"}
RUN_DEFAULTS = run_defaults()  # as the main job runs
BOOTSTRAP_INTERVAL = RUN_DEFAULTS["STRATEGY_INTERVAL"]
TRAIN = [
    "--source",
    "sim",
    "--sim-minutes",
    "20",
    "--interval",
    BOOTSTRAP_INTERVAL,
    "--horizon",
    "5",
    "--exclude",
    "sma_200_rel,sma_50_rel",
    "--activate",
]


def buckets(samples, stage: str) -> dict[float, float]:
    """Cumulative bucket counts of one stage: upper bound (inf last) → count."""
    return {float(lbl["le"]): v for lbl, v in samples.get(f"{HISTOGRAM}_bucket", ()) if lbl.get("stage") == stage}


def quantile(q: float, cumulative: dict[float, float]) -> float:
    """``histogram_quantile``: the bucket holding rank q·n, linear within it (its lower
    bound 0 for the first bucket; the +Inf bucket answers the highest finite bound)."""
    bounds = sorted(cumulative)
    n = cumulative[math.inf] if bounds else 0.0
    if n <= 0:
        return math.nan
    rank, lower, below = q * n, 0.0, 0.0
    for upper in bounds:
        count = cumulative[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def window(worker: Process, seconds: float) -> dict:
    """Per stage, the latencies observed during the next ``seconds`` (bucket differences),
    and the ticks/s the worker took in meanwhile."""
    before, t0 = scrape(worker.metrics_port, timeout=5), time.monotonic()
    time.sleep(seconds)
    worker.check()
    after, t1 = scrape(worker.metrics_port, timeout=5), time.monotonic()
    out = {
        "ticks_per_s": (
            total(after, "ticktape_events_in_total", stage="bars", topic="md.ticks")
            - total(before, "ticktape_events_in_total", stage="bars", topic="md.ticks")
        )
        / (t1 - t0)
    }
    for stage in STAGES:
        b0, b1 = buckets(before, stage), buckets(after, stage)
        diff = {le: b1[le] - b0.get(le, 0.0) for le in b1}
        out[stage] = {
            "count": diff.get(math.inf, 0.0),
            "p50": 1000 * quantile(0.5, diff),
            "p99": 1000 * quantile(0.99, diff),
        }
    return out


def wait_for_orders(worker: Process, timeout: float) -> float | None:
    """Seconds until the worker has published its first order (every stage is flowing);
    None when none came within ``timeout`` — the windows then measure the stages that flow."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        worker.check()
        if total(scrape(worker.metrics_port), f"{HISTOGRAM}_count", stage="risk") > 0:
            return time.monotonic() - start
        time.sleep(0.5)
    print(
        f"bench latency: no order within {timeout:.0f} s (see {worker.log_path}); measuring what flows", file=sys.stderr
    )
    return None


# (symbols, ticks/s, seconds per timed window): the load, then a tenth of it
LOADS = [(500, 5000.0, 30.0), (50, 500.0, 30.0)]
QUICK_LOADS = [(50, 500.0, 5.0)]


def measure(s, n_symbols: int, rate: float, seconds: float, runs: int, goal: bool) -> list[Figure]:
    """The latency figures of one load, in a namespace, database and home of its own."""
    home = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    names = " ".join(symbols(n_symbols))
    with scratch_database(s.database_url, "latency") as url:
        ns = namespace(s, "latency", database_url=url, home=str(home))
        try:
            kafka_clients.ensure_topics(ns)
            trainer = Process(ns, ["ticktape.cli", "train", *TRAIN], home / "train.log", free_port())
            if trainer.proc.wait(600) != 0:
                raise RuntimeError(f"training failed: {trainer.log_path.read_text(errors='replace')[-2000:]}")
            env = {
                "SYMBOLS": names,
                "BAR_INTERVALS": f"{BOOTSTRAP_INTERVAL},1m",
                **RUN_DEFAULTS,  # as the main job runs
                **LATENCY_PROFILE,
            }
            worker = Process(ns, ["ticktape.cli", "process", "worker"], home / "worker.log", free_port(), **env)
            sim = Process(
                ns, ["ticktape.cli", "produce", "sim", "--rate", str(rate)], home / "sim.log", free_port(), **env
            )
            try:
                first_order = wait_for_orders(worker, 300)
                results = repeat(lambda: window(worker, seconds), runs)
            finally:
                sim.stop()
                worker.stop()
        finally:
            drop(ns)
    load = f"{n_symbols} symbols, {rate:,.0f} ticks/s"
    detail = {
        "symbols": n_symbols,
        "tick_rate": rate,
        "window_s": seconds,
        "interval": BOOTSTRAP_INTERVAL,
        "run_defaults": RUN_DEFAULTS,
        "latency_profile": LATENCY_PROFILE,
        "first_order_s": None if first_order is None else round(first_order, 1),
        "quantiles": "histogram_quantile-style interpolation within the histogram's buckets",
    }
    figures = [
        Figure(
            "latency",
            f"worker intake ({load})",
            "ticks/s",
            [r["ticks_per_s"] for r in results],
            goal=f">= {rate:,.0f}" if goal else "",
            target=rate * 0.99 if goal else None,
            detail=detail,
        )
    ]
    for stage, event in STAGES.items():
        stage_detail = detail | {"observations": [r[stage]["count"] for r in results]}
        figures.append(
            Figure(
                "latency",
                f"window close → {event} published, p50 ({stage}; {load})",
                "ms",
                [r[stage]["p50"] for r in results],
                higher_is_better=False,
                detail=stage_detail,
            )
        )
        figures.append(
            Figure(
                "latency",
                f"window close → {event} published, p99 ({stage}; {load})",
                "ms",
                [r[stage]["p99"] for r in results],
                goal=f"< {GOAL_MS:.0f} ms" if goal else "",
                higher_is_better=False,
                target=GOAL_MS if goal else None,
                detail=stage_detail,
            )
        )
    return figures


def run(quick: bool, runs: int) -> list[Figure]:
    s = services()
    loads = QUICK_LOADS if quick else LOADS
    return [f for i, (n, rate, seconds) in enumerate(loads) for f in measure(s, n, rate, seconds, runs, goal=i == 0)]


def main(argv=None) -> int:
    return bench_main("latency", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())

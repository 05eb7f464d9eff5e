"""The main job for a long while, read as a user reads it: `ticktape run` (what `make run
DURATION=…` runs: the local stack, the simulator's 50 symbols, the whole pipeline), with
its worker's /metrics sampled every 10 s.

    python -m bench.bench_longrun --duration 1800                      # the defaults
    python -m bench.bench_longrun --duration 1800 --hog --quiet-partition 0@600:300

``--hog`` runs a CPU-bound process of its own beside the job for the whole run (the
symbols then fall behind as on a loaded machine); ``--quiet-partition P@START:LEN`` makes
the symbols of md.ticks partition P stop trading for LEN seconds from START (SIM_QUIET).
Not part of ``python -m bench``: it takes as long as ``--duration``.  Prints a table per
minute (orders, buffered events, idle symbols, late input) and the run's figures: orders
per minute after the warm-up, the largest risk buffer, decision latency p50/p99 (signal →
order, the risk stage's histogram), and whether the worker ever exited.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_latency import buckets, quantile
from bench.harness import RESULTS, ROOT, Figure, table, write_json
from ticktape.config import DEFAULT_SYMBOLS, settings
from ticktape.core.replay import partition_for
from ticktape.scrape import scrape, total

WARMUP_S = 180  # a model is trained on a fresh stack, then every symbol needs 34 bars
SAMPLE_S = 10


def _hog() -> None:
    while True:  # a CPU-bound process of its own
        sum(i * i for i in range(100_000))


def quiet_spec(arg: str, partitions: int = 6) -> str:
    """``P@START:LEN`` → SIM_QUIET for the default symbols of md.ticks partition P."""
    p, when = arg.split("@")
    syms = [s for s in DEFAULT_SYMBOLS if partition_for(s, partitions) == int(p)]
    return f"{'+'.join(syms)}@{when}"


def worker_port(home: Path) -> tuple[int, int] | None:
    try:
        doc = json.loads((home / "run.json").read_text())
    except (OSError, ValueError):
        return None
    for p in doc["processes"]:
        if p["role"] == "worker":
            return int(p["port"]), int(p["pid"])
    return None


def run(duration: float, hog: bool, quiet: str | None) -> tuple[list[Figure], list[dict]]:
    s = settings()
    home = Path(s.home)
    subprocess.run(
        [sys.executable, "-m", "ticktape.cli", "stack", "down"], cwd=ROOT, check=False, capture_output=True
    )  # a fresh broker: the run starts from empty topics
    env = dict(os.environ) | ({"SIM_QUIET": quiet_spec(quiet)} if quiet else {})
    (home / "run.json").unlink(missing_ok=True)
    job = subprocess.Popen(
        [sys.executable, "-m", "ticktape.cli", "run", "--duration", str(duration)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(1 if hog else 0)]
    for h in hogs:
        h.start()
    rows, first_pid, exited = [], None, False
    started = time.monotonic()
    warm = None
    try:
        while job.poll() is None:
            time.sleep(SAMPLE_S)
            found = worker_port(home)
            if found is None:
                continue
            port, pid = found
            first_pid = first_pid or pid
            if pid != first_pid:
                exited = True
            samples = scrape(port)
            if not samples:
                continue
            row = {
                "t": round(time.monotonic() - started),
                "orders": total(samples, "ticktape_orders_total"),
                "rejections": total(samples, "ticktape_risk_rejections_total"),
                "pending": total(samples, "ticktape_risk_pending"),
                "idle": total(samples, "ticktape_risk_idle_symbols"),
                "late": total(samples, "ticktape_risk_late_events_total"),
                "forced": total(samples, "ticktape_risk_forced_releases_total"),
                "bars": total(samples, "ticktape_bars_closed_total"),
                "risk_buckets": buckets(samples, "risk"),
            }
            rows.append(row)
            if warm is None and row["t"] >= WARMUP_S:
                warm = row
    finally:
        for h in hogs:
            h.terminate()
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(60)
    exited = exited or job.returncode not in (0, None)
    after = [r for r in rows if warm is not None and r["t"] >= warm["t"]]
    per_min = [
        (b["orders"] - a["orders"]) * 60 / (b["t"] - a["t"]) for a, b in zip(after[::6], after[6::6])
    ]  # one-minute steps
    end = rows[-1] if rows else None
    latency = (
        {le: end["risk_buckets"].get(le, 0.0) - warm["risk_buckets"].get(le, 0.0) for le in end["risk_buckets"]}
        if end and warm
        else {}
    )
    label = (
        "defaults"
        + (", a CPU hog beside it" if hog else "")
        + (f", partition {quiet.split('@')[0]} quiet {quiet.split('@')[1]}" if quiet else "")
    )
    nan = math.nan
    figures = [
        Figure(
            "longrun",
            f"orders per minute after warm-up, lowest minute ({label})",
            "orders",
            [min(per_min) if per_min else nan],
        ),
        Figure(
            "longrun",
            f"orders per minute after warm-up, median ({label})",
            "orders",
            [sorted(per_min)[len(per_min) // 2] if per_min else nan],
        ),
        Figure(
            "longrun",
            f"largest risk buffer (of RISK_MAX_PENDING {s.risk_max_pending:,}) ({label})",
            "events",
            [max((r["pending"] for r in rows), default=nan)],
            higher_is_better=False,
        ),
        Figure(
            "longrun",
            f"decision latency p50, signal → order ({label})",
            "ms",
            [quantile(0.5, latency) * 1000 if latency else nan],
            higher_is_better=False,
        ),
        Figure(
            "longrun",
            f"decision latency p99, signal → order ({label})",
            "ms",
            [quantile(0.99, latency) * 1000 if latency else nan],
            higher_is_better=False,
        ),
        Figure(
            "longrun",
            f"late input / forced releases / worker exits ({label})",
            "events",
            [(end["late"] + end["forced"] if end else nan) + (1 if exited else 0)],
            higher_is_better=False,
        ),
    ]
    return figures, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800)
    parser.add_argument("--hog", action="store_true", help="a CPU-bound process beside the job")
    parser.add_argument("--quiet-partition", metavar="P@START:LEN", help="partition P's symbols stop trading")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    figures, rows = run(args.duration, args.hog, args.quiet_partition)
    print("    t  orders  rejections  pending  idle  late  forced")
    for r in rows[::6]:
        print(
            f"{r['t']:>5}  {r['orders']:>6.0f}  {r['rejections']:>10.0f}  {r['pending']:>7.0f}  {r['idle']:>4.0f}"
            f"  {r['late']:>4.0f}  {r['forced']:>6.0f}"
        )
    print(table(figures))
    out = args.output or RESULTS / (
        "longrun" + ("-hog" if args.hog else "") + ("-quiet" if args.quiet_partition else "") + ".json"
    )
    write_json(
        out,
        figures,
        False,
        benchmark="longrun",
        rows=[{k: v for k, v in r.items() if k != "risk_buckets"} for r in rows],
    )
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What every benchmark shares: warm-up, repeated runs, median and spread, one table,
JSON results, and the machine they were taken on.

A benchmark module exposes ``run(quick: bool, runs: int) -> list[Figure]`` and a
``main`` that calls ``bench_main``; ``python -m bench`` runs them all into one table.
A figure is one number per run (a rate, a latency, a ratio of two rates measured in the
same run); the table shows its median and spread (min – max over the runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MIN_RUNS = 3


@dataclass
class Figure:
    benchmark: str  # "ticks", "latency", "sink", ...
    name: str  # what is measured, e.g. "tick → bar, batched worker"
    unit: str  # "ticks/s", "ms", "x", "bytes"
    values: list[float]  # one per run
    goal: str = ""  # e.g. ">= 100,000": the target, empty when none
    higher_is_better: bool = True
    target: float | None = None  # the goal as a number (None: no target)
    detail: dict = field(default_factory=dict)  # counts and parameters behind the figure

    @property
    def observed(self) -> list[float]:
        """The runs' values that are numbers (NaN: that run observed nothing)."""
        return [v for v in self.values if not math.isnan(v)]

    @property
    def median(self) -> float:
        return statistics.median(self.observed) if self.observed else math.nan

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.observed), max(self.observed)) if self.observed else (math.nan, math.nan)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.median >= self.target if self.higher_is_better else self.median <= self.target

    def as_dict(self) -> dict:
        low, high = self.spread
        return asdict(self) | {"median": self.median, "min": low, "max": high, "met": self.met}


def repeat(fn: Callable[[], float | dict], runs: int, warmup: int = 1) -> list:
    """``fn()`` ``warmup`` times (results dropped), then ``runs`` times: the results."""
    if runs < MIN_RUNS:
        raise ValueError(f"at least {MIN_RUNS} runs, not {runs}")
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(runs)]


def timed_rate(fn: Callable[[], int]) -> float:
    """Items per second of one call of ``fn`` (which returns how many items it did)."""
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def fmt(value: float, unit: str, with_unit: bool = True) -> str:
    if math.isnan(value):
        return "none"  # nothing observed (e.g. no order reached within the time limit)
    if unit == "x":
        return f"{value:.1f}x"
    if unit == "%":
        return f"{value:.0f}%"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}" if with_unit else text


def table(figures: list[Figure]) -> str:
    """The markdown table: | benchmark | figure | median | spread | goal |."""
    lines = ["| benchmark | figure | median | spread (min – max) | goal |", "|---|---|---:|---:|---|"]
    for f in figures:
        verdict = {None: "", True: " ✔", False: " ✘"}[f.met]
        low, high = f.spread
        spread = f"{fmt(low, f.unit, False)} – {fmt(high, f.unit, False)}"
        lines.append(f"| {f.benchmark} | {f.name} | {fmt(f.median, f.unit)} | {spread} | {f.goal}{verdict} |")
    return "\n".join(lines)


def services():
    """Settings on the real services: those the environment names, else the local stack
    (``ticktape stack up``, started here when it is not running; it stays up)."""
    from ticktape.config import settings
    from ticktape.stack import LocalStack

    s = settings()
    if not (s.kafka_bootstrap_servers and s.database_url and s.redis_url):
        LocalStack(s.home).up(kafka=not s.kafka_bootstrap_servers, postgres=not s.database_url, redis=not s.redis_url)
        s = settings()
    return s


def machine() -> dict:
    """The machine a result was taken on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(path: Path, figures: list[Figure], quick: bool, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"quick": quick, "machine": machine(), **extra, "figures": [f.as_dict() for f in figures]}, indent=2)
        + "\n"
    )


def bench_main(name: str, run: Callable[[bool, int], list[Figure]], doc: str, argv=None, runs: int = 5) -> int:
    """The command line of one benchmark module: --quick, --runs, --output."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 runs: a smoke run")
    parser.add_argument("--runs", type=int, default=runs, help=f"timed runs after the warm-up (>= {MIN_RUNS})")
    parser.add_argument("--output", type=Path, default=RESULTS / f"{name}.json")
    args = parser.parse_args(argv)
    if args.runs < MIN_RUNS:
        parser.error(f"--runs must be at least {MIN_RUNS}")
    runs = MIN_RUNS if args.quick else args.runs
    figures = run(args.quick, runs)
    print(table(figures))
    write_json(args.output, figures, args.quick, benchmark=name, runs=runs)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0

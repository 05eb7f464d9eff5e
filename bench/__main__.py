"""`python -m bench` (`make bench`): every benchmark in one run, one table, one JSON.

    python -m bench                    # full sizes, 5 timed runs per figure after a warm-up
    python -m bench --quick            # tiny sizes, 3 runs: the smoke test (tests/test_bench_smoke.py)
    python -m bench --only sink,ticks  # some of them
    python -m bench --readme           # also put the table into README.md (between its markers)

Benchmarks needing services use those the environment names, else the local stack
(started when it is not running).  The table goes to stdout, the figures with the
machine they were taken on to bench/results/all.json.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import time
from pathlib import Path

from bench.harness import MIN_RUNS, RESULTS, ROOT, machine, table, write_json

# In the order of the goals, then the per-stage figures.
BENCHMARKS = ["ticks", "peers", "latency", "sink", "backtest", "scale", "indicators", "predict", "trading", "cli"]
README_MARKERS = ("<!-- bench-table:start -->", "<!-- bench-table:end -->")


def available() -> list[str]:
    return [name for name in BENCHMARKS if (ROOT / "bench" / f"bench_{name}.py").exists()]


def put_in_readme(text: str, readme: Path = ROOT / "README.md") -> None:
    start, end = README_MARKERS
    doc = readme.read_text()
    if start not in doc or end not in doc:
        raise SystemExit(f"{readme} lacks the markers {start} … {end}")
    new = re.sub(
        re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{text}\n{end}", doc, count=1, flags=re.S
    )
    readme.write_text(new)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 runs: a smoke run")
    parser.add_argument("--runs", type=int, default=5, help=f"timed runs per figure (>= {MIN_RUNS})")
    parser.add_argument("--only", help="comma-separated benchmarks: " + ",".join(BENCHMARKS))
    parser.add_argument("--output", type=Path, default=RESULTS / "all.json")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args(argv)
    if args.runs < MIN_RUNS:
        parser.error(f"--runs must be at least {MIN_RUNS}")
    names = available()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown benchmarks {unknown}; available: {','.join(names)}")
        names = [n for n in names if n in wanted]
    runs = MIN_RUNS if args.quick else args.runs
    figures, seconds = [], {}
    for name in names:
        started = time.monotonic()
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        figures += importlib.import_module(f"bench.bench_{name}").run(args.quick, runs)
        seconds[name] = round(time.monotonic() - started, 1)
    text = table(figures)
    m = machine()
    note = (
        f"{m['cpu']}, {m['cpu_count']} cores, Python {m['python']}, load {m['load_average_1m']:.1f}; "
        f"median of {runs} runs after a warm-up{' (quick sizes)' if args.quick else ''}"
    )
    print(text)
    print(f"\n{note}")
    write_json(args.output, figures, args.quick, runs=runs, benchmarks=names, seconds=seconds)
    print(f"wrote {args.output}", file=sys.stderr)
    if args.readme:
        put_in_readme(f"{text}\n\n<sub>{note}</sub>")
    return 0


if __name__ == "__main__":
    sys.exit(main())

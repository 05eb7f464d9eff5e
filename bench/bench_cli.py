"""CLI start-up: wall time of `ticktape --help` and of `ticktape config`, each a fresh
Python process (what a user waits for before any work starts).

    python -m bench.bench_cli [--quick]

Only the command that runs is imported (ticktape/cli.py); the goal is `--help` well
under a second.  Measured, never asserted (the machine may be loaded)."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.harness import ROOT, Figure, bench_main, repeat

GOAL_S = 1.0


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ticktape.cli", *argv],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def run(quick: bool, runs: int) -> list[Figure]:
    return [
        Figure(
            "cli",
            "ticktape --help, fresh process",
            "s",
            repeat(lambda: wall(["--help"]), runs),
            goal=f"< {GOAL_S:g}",
            higher_is_better=False,
            target=GOAL_S,
        ),
        Figure(
            "cli", "ticktape config, fresh process", "s", repeat(lambda: wall(["config"]), runs), higher_is_better=False
        ),
    ]


def main(argv=None) -> int:
    return bench_main("cli", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())

"""`ticktape process worker`: the stream processors (Faust worker running every stage)."""

from __future__ import annotations

from ..config import settings
from ..kafka_clients import check_reachable


def register(sub):
    p = sub.add_parser("process", help="run the stream processors")
    psub = p.add_subparsers(dest="role", metavar="ROLE", required=True)
    w = psub.add_parser(
        "worker", help="Faust worker with every stage (bars, indicators, ...); stops gracefully on SIGTERM/SIGINT"
    )
    w.set_defaults(func=run_worker)


def run_worker(args) -> int:
    from stream_processors.app import run_worker as run

    return run(check_reachable(settings()))

"""`ticktape stack up|down|status|env`: the local stack (broker, PostgreSQL, Redis)."""

from __future__ import annotations

import shlex
import shutil

from ..config import settings
from ..stack import LocalStack, StackError


def register(sub):
    p = sub.add_parser("stack", help="manage the local stack (broker, PostgreSQL, Redis)")
    ssub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = ssub.add_parser("up", help="start the local services, create topics and the schema")
    up.add_argument(
        "--with-prometheus", action="store_true", help="also start a local Prometheus scraping the local processes"
    )
    up.set_defaults(func=run_up)
    ssub.add_parser("down", help="stop the local services").set_defaults(func=run_down)
    ssub.add_parser("status", help="show what runs").set_defaults(func=run_status)
    ssub.add_parser("env", help="print export lines for the running stack").set_defaults(func=run_env)


def _stack() -> LocalStack:
    return LocalStack(settings().home)


def bring_up(with_prometheus: bool = False) -> dict[str, str]:
    """Start what the environment does not provide, then create topics and the schema."""
    import os

    from .. import kafka_clients
    from sinks import schema

    want_prom = with_prometheus and shutil.which("prometheus") is not None
    try:
        endpoints = _stack().up(
            kafka=not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
            postgres=not os.environ.get("DATABASE_URL"),
            redis=not os.environ.get("REDIS_URL"),
            prometheus=want_prom,
        )
    except StackError as e:
        raise SystemExit(f"ticktape: stack: {e}") from None
    s = settings()
    kafka_clients.ensure_topics(s)
    schema.migrate(s)
    return endpoints


def run_up(args) -> int:
    bring_up(args.with_prometheus)
    return run_status(args)


def run_down(args) -> int:
    _stack().down()
    print("local stack stopped")
    return 0


def run_status(args) -> int:
    status = _stack().status()
    if not status:
        print("local stack: not started (ticktape stack up)")
        return 1
    for name, st in status.items():
        print(f"{name:<11} {'running' if st['running'] else 'STOPPED':<8} 127.0.0.1:{st['port']}  pid {st['pid']}")
    return 0 if all(st["running"] for st in status.values()) else 1


def run_env(args) -> int:
    s = settings()
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "DATABASE_URL": s.database_url,
        "REDIS_URL": s.redis_url,
    }
    prom = _stack().endpoints().get("PROMETHEUS_URL")
    if prom:
        values["PROMETHEUS_URL"] = prom
    print("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items() if v))
    return 0

"""`ticktape db migrate|status`: the database schema (sinks/migrations)."""

from __future__ import annotations

import psycopg

from ..config import settings


def register(sub):
    p = sub.add_parser("db", help="database schema: apply or show migrations")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    dsub.add_parser("migrate", help="apply pending migrations (idempotent)").set_defaults(func=run_migrate)
    dsub.add_parser("status", help="show applied and pending migrations").set_defaults(func=run_status)


def run_migrate(args) -> int:
    from sinks import schema

    try:
        applied = schema.migrate(settings())
    except psycopg.Error as e:
        raise SystemExit(f"ticktape: db: {_one_line(e)}") from None
    print("\n".join(f"applied {name}" for name in applied) or "schema up to date")
    return 0


def run_status(args) -> int:
    from sinks import schema

    try:
        applied, pending = schema.status(settings())
    except psycopg.Error as e:
        raise SystemExit(f"ticktape: db: {_one_line(e)}") from None
    for m in applied:
        print(f"{m['name']:<24} {m['flavor']:<12} applied {m['applied_at']:%Y-%m-%d %H:%M:%S%z}")
    for name in pending:
        print(f"{name:<24} {'':<12} PENDING")
    return 1 if pending else 0


def _one_line(e: psycopg.Error) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

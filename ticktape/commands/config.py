"""`ticktape config`: the settings in force (secrets masked) or the README table."""
from __future__ import annotations

from ..config import settings, settings_table


def register(sub):
    p = sub.add_parser("config", help="show the settings in force")
    p.add_argument("--table", action="store_true", help="print the README's settings table (Markdown)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.table:
        print("| variable | default | meaning |\n|---|---|---|")
        for env, default, doc in settings_table():
            print(f"| `{env}` | `{default}` | {doc} |")
        return 0
    for env, value in settings().redacted().items():
        print(f"{env}={value}")
    return 0

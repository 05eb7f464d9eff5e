"""`ticktape config`: the settings in force (secrets masked), where each comes from, or
the README table.

Values are the ones `ticktape run` (make run) gives its processes: the environment, else
the local stack's endpoints, else config/run.env, else the default.  A value that differs
from the default is marked with where it comes from."""

from __future__ import annotations

import json

from ..config import (
    _STACK_ENDPOINTS,
    RUN_DEFAULTS_FILE,
    run_defaults,
    set_in_environment,
    settings,
    settings_table,
)


def register(sub):
    p = sub.add_parser("config", help="show the settings in force (what `ticktape run` uses), overrides marked")
    p.add_argument("--table", action="store_true", help="print the README's settings table (Markdown)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print {VAR: {value, default, source}} (source: environment, local stack, run, default)",
    )
    p.set_defaults(func=run)


def in_force() -> dict[str, dict[str, str]]:
    """VAR -> value (secrets masked), default and source."""
    values = settings().redacted()
    defaults = {env: default for env, default, _ in settings_table()}
    env_set, run = set_in_environment(), run_defaults()
    out = {}
    for env, value in values.items():
        if env in env_set:
            source = "environment"
        elif env in _STACK_ENDPOINTS and value:
            source = "local stack"
        elif env in run:
            value, source = run[env], "run"
        else:
            source = "default"
        out[env] = {"value": value, "default": defaults[env], "source": source}
    return out


SOURCE_NOTE = {
    "environment": "set in the environment",
    "local stack": "the running local stack",
    "run": f"ticktape run: {RUN_DEFAULTS_FILE.parent.name}/{RUN_DEFAULTS_FILE.name}",
}


def run(args) -> int:
    if args.table:
        print("| variable | default | meaning |\n|---|---|---|")
        for env, default, doc in settings_table():
            print(f"| `{env}` | `{default}` | {doc} |")
        return 0
    rows = in_force()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for env, row in rows.items():
        note = f"  # {SOURCE_NOTE[row['source']]}; default {row['default']!r}" if row["source"] != "default" else ""
        print(f"{env}={row['value']}{note}")
    return 0

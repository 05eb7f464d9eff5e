"""`ticktape models list|show|activate VERSION`: the model registry (ticktape.registry).

VERSION may be a unique prefix of a version.  Activation refuses (exit 2, one line,
nothing changed) a model whose features this pipeline does not produce."""
from __future__ import annotations

import contextlib
import json

from ..cli import UsageError
from ..config import settings


def register(sub):
    p = sub.add_parser("models", help="model registry: list, show, activate")
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    msub.add_parser("list", help="registered models, the active one marked *").set_defaults(func=run_list)
    show = msub.add_parser("show", help="a model's metadata (JSON)")
    show.add_argument("version")
    show.set_defaults(func=run_show)
    act = msub.add_parser("activate", help="make a model the active one (every predict worker switches)")
    act.add_argument("version")
    act.set_defaults(func=run_activate)


@contextlib.contextmanager
def registry_errors():
    """Registry refusals → one line, exit 2; database/broker failures → one line, exit 1."""
    import psycopg
    from confluent_kafka import KafkaException

    from ..core.ml import ModelMismatch
    from ..registry import RegistryError

    try:
        yield
    except (RegistryError, ModelMismatch) as e:
        raise UsageError(str(e)) from None
    except (psycopg.Error, KafkaException) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"ticktape: models: {text}") from None


def _auc(metrics: dict, who: str) -> str:
    value = metrics.get(who, {}).get("auc")
    return "n/a" if value is None else f"{value:.4f}"


def run_list(args) -> int:
    from .. import registry

    with registry_errors():
        rows = registry.list_models(settings())
    print(f"  {'name':<16} {'version':<12} {'interval':>8} {'horizon':>7} {'auc':>7} {'base':>7} "
          f"{'registered':<20} activated")
    for r in rows:
        activated = f"{r['activated_at']:%Y-%m-%d %H:%M:%S}" if r["active"] else ""
        print(f"{'*' if r['active'] else ' '} {r['name']:<16} {r['version']:<12} {r['interval']:>8} "
              f"{r['horizon']:>7} {_auc(r['metrics'], 'holdout'):>7} {_auc(r['metrics'], 'baseline'):>7} "
              f"{r['registered_at']:%Y-%m-%d %H:%M:%S}  {activated}")
    return 0


def run_show(args) -> int:
    from .. import registry

    with registry_errors():
        meta, _, active = registry.get(settings(), args.version)
    print(json.dumps(meta | {"active": active}, indent=2, sort_keys=True))
    return 0


def run_activate(args) -> int:
    from .. import registry

    s = settings()
    with registry_errors():
        meta = registry.activate(s, args.version)
    print(f"active {meta['name']} {meta['version']} (announced on {s.topic(registry.MODELS_TOPIC)})")
    return 0

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
    ens = msub.add_parser(
        "ensure",
        help="no active model: train and activate a bootstrap one on simulated "
        "bars (what ticktape run and the docker stack do); else announce it again",
    )
    ens.add_argument("--interval", help="bar interval of the model (default STRATEGY_INTERVAL)")
    ens.set_defaults(func=run_ensure)


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
    print(
        f"  {'name':<16} {'version':<12} {'interval':>8} {'horizon':>7} {'auc':>7} {'base':>7} "
        f"{'registered':<20} activated"
    )
    for r in rows:
        activated = f"{r['activated_at']:%Y-%m-%d %H:%M:%S}" if r["active"] else ""
        print(
            f"{'*' if r['active'] else ' '} {r['name']:<16} {r['version']:<12} {r['interval']:>8} "
            f"{r['horizon']:>7} {_auc(r['metrics'], 'holdout'):>7} {_auc(r['metrics'], 'baseline'):>7} "
            f"{r['registered_at']:%Y-%m-%d %H:%M:%S}  {activated}"
        )
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


# features with a 50/200-bar lookback would keep a short run from ever predicting
BOOTSTRAP_TRAIN = [
    "--source",
    "sim",
    "--sim-minutes",
    "60",
    "--horizon",
    "5",
    "--exclude",
    "sma_200_rel,sma_50_rel",
    "--activate",
]


def ensure_model(interval: str) -> None:
    """A fresh stack has no model: train and activate one on the simulator's history, so
    the whole path (predictions, orders, fills) runs; an active one is announced again
    (the database outlives an in-memory broker).  The simulator is a random walk: this
    model only makes the pipeline flow; train a real one with `ticktape train`."""
    from .. import registry
    from ..cli import main as cli_main

    s = settings()
    with registry_errors():
        active = [m for m in registry.list_models(s) if m["active"]]
        if active:
            meta, artifact, _ = registry.get(s, active[0]["version"])
            registry.announce(s, meta, artifact)
            print(f"ticktape: active model {meta['name']} {meta['version']} announced again", flush=True)
            return
    print(
        f"ticktape: no active model: training one on simulated {interval} bars "
        "(ticktape train --source sim; about half a minute) ...",
        flush=True,
    )
    code = cli_main(["train", "--interval", interval, *BOOTSTRAP_TRAIN])
    if code != 0:
        raise SystemExit(f"ticktape: could not train the bootstrap model (exit {code})")


def run_ensure(args) -> int:
    ensure_model(args.interval or settings().strategy_interval)
    return 0

"""`ticktape train`: features + labels from stored bars, XGBoost, a holdout report, and a
registered (optionally activated) model.

Bars come from a CSV (``time,symbol,open,high,low,close,volume``, as `ticktape
indicators` reads it; no VWAP column: the typical price stands in), the database's
``bars`` table, the ``md.bars.<interval>`` topic read from its start, or the seeded
simulator (``sim``: history for a fresh stack, made by the pure core).  The indicator
engine runs over them, then ``ticktape.core.features`` (the predict agent's own code);
``ticktape.core.ml`` splits by time, trains and reports.  ``--from``/``--to`` select bars
by window start (the indicators warm up inside that range).  ``--features`` names the
model's features, built-in ones and the outputs of the user indicators of ``INDICATORS``
(default: all of them); the model records them and the user indicators it uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..api import load_indicators
from ..cli import UsageError
from ..config import settings
from ..core.features import FEATURE_NAMES, Bars, build_dataset
from ..core.indicators import BarError, IndicatorSpec
from ..core.intervals import interval_seconds
from ..core.ml import TrainParams, train
from ..market_calendar import market_hours
from .produce import parse_time

SOURCES = ("db", "csv", "topic", "sim")
TOPIC_IDLE_S = 5.0  # reading a topic ends at every partition's end, or after this long without data


def register(sub):
    p = sub.add_parser("train", help="train an XGBoost direction model and register it")
    p.add_argument("--source", required=True, choices=SOURCES, help="where the bars are")
    p.add_argument("--input", help="CSV file of bars (--source csv)")
    p.add_argument(
        "--sim-minutes",
        type=float,
        default=240.0,
        help="--source sim: minutes of simulated history (SYMBOLS, SIM_SEED; default 240)",
    )
    p.add_argument("--from", dest="start", type=parse_time, help="first window start, ISO-8601 (UTC)")
    p.add_argument("--to", dest="end", type=parse_time, help="window starts before this, ISO-8601 (UTC)")
    p.add_argument("--symbols", help="only these symbols (comma/space separated)")
    p.add_argument("--interval", default="1m", help="bar interval (default 1m)")
    p.add_argument("--horizon", type=int, default=5, help="label: direction over the next N bars (default 5)")
    p.add_argument("--holdout", type=float, default=0.2, help="latest share of the rows held out (default 0.2)")
    p.add_argument(
        "--features",
        help="the model's features (comma separated): built-in ones and INDICATORS outputs (default: all)",
    )
    p.add_argument("--exclude", help="features to leave out (comma separated), e.g. sma_200_rel for short histories")
    p.add_argument("--name", default="direction", help="model name (default direction)")
    p.add_argument("--rounds", type=int, default=TrainParams.rounds, help="boosting rounds")
    p.add_argument("--max-depth", type=int, default=TrainParams.max_depth)
    p.add_argument("--eta", type=float, default=TrainParams.eta, help="learning rate")
    p.add_argument("--seed", type=int, default=TrainParams.seed)
    p.add_argument(
        "--threads", type=int, default=TrainParams.threads, help="XGBoost threads (the artifact does not depend on it)"
    )
    p.add_argument("--activate", action="store_true", help="make the new model the active one")
    p.set_defaults(func=run)


def _check_args(args, indicators: Sequence[IndicatorSpec]) -> list[str]:
    try:
        interval_seconds(args.interval)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.horizon < 1:
        raise UsageError(f"--horizon must be at least 1 bar, got {args.horizon}")
    if not 0.0 < args.holdout < 1.0:
        raise UsageError(f"--holdout must be between 0 and 1, got {args.holdout}")
    if args.rounds < 1 or args.max_depth < 1 or args.threads < 1 or not args.eta > 0:
        raise UsageError("--rounds, --max-depth, --threads and --eta must be positive")
    if (args.source == "csv") != (args.input is not None):
        raise UsageError("--input FILE goes with --source csv (and only with it)")
    if args.start is not None and args.end is not None and args.start >= args.end:
        raise UsageError("--from must be before --to")
    if not args.name or not all(c.isalnum() or c in "-_." for c in args.name) or args.name[0] == ".":
        raise UsageError(f"--name must be letters, digits, '-', '_' or '.', got {args.name!r}")
    return _feature_list(args, FEATURE_NAMES + tuple(o for spec in indicators for o in spec.cls.output_names()))


def _feature_list(args, available: tuple[str, ...]) -> list[str]:
    """--features (default: every available one) minus --exclude, each name checked."""

    def names(option: str, text: str | None) -> list[str]:
        given = [f.strip() for f in (text or "").split(",") if f.strip()]
        unknown = [f for f in given if f not in available]
        if unknown:
            raise UsageError(
                f"{option}: unknown feature(s) {', '.join(unknown)}; the features are {', '.join(available)} "
                "(user indicators' outputs come from INDICATORS)"
            )
        return given

    chosen = names("--features", args.features)
    if len(set(chosen)) != len(chosen):
        raise UsageError(f"--features names a feature twice: {args.features}")
    excluded = names("--exclude", args.exclude)
    features = [f for f in (chosen or available) if f not in excluded]
    if not features:
        raise UsageError("--features/--exclude leave no feature")
    return features


# --- bar sources ---------------------------------------------------------------------
def _csv_bars(path: str) -> tuple[Bars, list[int]]:
    from .indicators import read_bars

    _, _, lines, cols = read_bars(path)
    return Bars(
        cols["symbol"], cols["time"], cols["open"], cols["high"], cols["low"], cols["close"], cols["volume"]
    ), lines


def _db_bars(s, interval: str) -> Bars:
    import psycopg

    if not s.database_url:
        raise UsageError("--source db: no database (set DATABASE_URL or run `ticktape stack up`)")
    query = (
        "SELECT symbol, (extract(epoch FROM window_start) * 1000000)::bigint, open, high, low, close, "
        "volume, vwap FROM bars WHERE interval = %s ORDER BY symbol, window_start"
    )
    try:
        with psycopg.connect(s.database_url, connect_timeout=10) as conn:
            rows = conn.execute(query, (interval,)).fetchall()
    except psycopg.Error as e:
        raise UsageError(f"--source db: {str(e).strip().splitlines()[0]}") from None
    return Bars(*(list(col) for col in zip(*rows))) if rows else Bars(*([] for _ in range(8)))


def _topic_bars(s, interval: str) -> Bars:
    """Every bar of md.bars.<interval>, from the start; a redelivered bar counts once."""
    from confluent_kafka import KafkaException

    from .. import kafka_clients
    from ..serde import Serde, SerdeError

    topic = s.topic(f"md.bars.{interval}")
    try:
        messages = kafka_clients.read_to_end(s, topic, s.group("train"), TOPIC_IDLE_S)
    except KeyError as e:
        raise UsageError(f"--source topic: {e.args[0]}") from None
    except KafkaException as e:
        raise UsageError(f"--source topic: {e}") from None
    serde = Serde(s.schema_registry_url)
    seen: dict[str, dict] = {}
    for msg in messages:
        try:
            kind, bar = serde.decode(msg.value())
        except SerdeError:
            continue  # not a bar: the bars stage dead-letters such input, it never lands here
        if kind == "bar":
            seen.setdefault(bar["event_id"], bar)
    return Bars.from_events(list(seen.values()))


def _sim_bars(s, interval: str, minutes: float) -> Bars:
    """Bars of the seeded simulator (the pure core, no broker): a model for a fresh stack."""
    from ..core.simbars import simulated_bars

    if minutes <= 0:
        raise UsageError(f"--sim-minutes must be positive, got {minutes:g}")
    start_us = parse_time("2026-01-05T14:30:00Z")  # a fixed session open: same history every time
    return Bars.from_events(
        simulated_bars(s.symbol_list, seed=s.sim_seed, start_us=start_us, minutes=minutes, interval=interval)
    )


def _select(bars: Bars, start, end, symbols, hours=None, width_us: int = 0) -> Bars:
    """The bars in [start, end) of ``symbols`` whose window meets a session of ``hours``
    (a MarketHours; None: any time): closed days and hours are skipped as live sources skip them."""
    keep = [
        i
        for i in range(len(bars))
        if (start is None or bars.window_start[i] >= start)
        and (end is None or bars.window_start[i] < end)
        and (symbols is None or bars.symbol[i] in symbols)
        and (hours is None or hours.overlaps(bars.window_start[i], bars.window_start[i] + width_us))
    ]
    if len(keep) == len(bars):
        return bars
    cols = [bars.symbol, bars.window_start, bars.open, bars.high, bars.low, bars.close, bars.volume]
    out: list[list[Any]] = [[col[i] for i in keep] for col in cols]
    # the seven columns by position (a *list of unknown length could also fill vwap, says mypy)
    return Bars(
        out[0],
        out[1],
        out[2],
        out[3],
        out[4],
        out[5],
        out[6],
        vwap=None if bars.vwap is None else [bars.vwap[i] for i in keep],
    )


# --- the command -----------------------------------------------------------------------
def _fmt(x) -> str:
    return "   n/a" if x is None else f"{x:.4f}"


def report(meta: dict) -> str:
    rows, win, m = meta["rows"], meta["window"], meta["metrics"]
    lines = [
        f"data      {meta['data']['source']}  {rows['symbols']} symbols, {rows['bars']:,} bars of "
        f"{meta['interval']}  fingerprint {meta['data']['fingerprint'][:16]}",
        f"rows      {rows['missing_features']:,} missing features (lookback), {rows['unlabelled']:,} unlabelled, "
        f"{rows['purged']:,} purged before the holdout",
        f"          train {rows['train']:,} ({win['train_from']} .. {win['train_to']}, last label known "
        f"{win['last_train_label_end']})",
        f"          holdout {rows['holdout']:,} ({win['holdout_from']} .. {win['holdout_to']})",
        f"features  {len(meta['features'])} ({meta['feature_set']}); label: close {meta['horizon']} bars "
        f"later above this close",
        f"holdout   {'':<10} {'AUC':>8} {'accuracy':>9} {'log-loss':>9}",
    ]
    for i, rec in enumerate(meta.get("indicators", [])):  # the user indicators the predict stage must run
        head = "indicator" if i == 0 else ""
        lines.insert(
            5 + i, f"{head:<10}{rec['class']} ({', '.join(rec['outputs'])}; source {rec['source_sha256'][:12]})"
        )
    for who, label in (("holdout", "model"), ("baseline", "baseline")):
        s = m[who]
        lines.append(f"          {label:<10} {_fmt(s['auc']):>8} {s['accuracy']:>9.4f} {s['log_loss']:>9.4f}")
    lines.append(f"          (baseline: constant p_up = the training up rate {m['train_up_rate']:.4f})")
    top = ", ".join(f"{i['feature']} {i['gain_share']:.3f}" for i in meta["importance"][:8])
    lines.append(f"importance (gain share) {top}")
    return "\n".join(lines)


def run(args) -> int:
    s = settings()
    indicators = load_indicators(s)  # ConfigError: one line, exit 2
    features = _check_args(args, indicators)
    symbols = set(args.symbols.replace(",", " ").split()) if args.symbols else None
    lines = None
    if args.source == "csv":
        bars, lines = _csv_bars(args.input)
        source = f"csv:{args.input}"
    elif args.source == "db":
        bars, source = _db_bars(s, args.interval), f"db:bars interval={args.interval}"
    elif args.source == "topic":
        bars, source = _topic_bars(s, args.interval), f"topic:{s.topic(f'md.bars.{args.interval}')}"
    else:
        bars, source = (
            _sim_bars(s, args.interval, args.sim_minutes),
            (f"sim:seed={s.sim_seed} minutes={args.sim_minutes:g} symbols={len(s.symbol_list)}"),
        )
    if lines is not None and (args.start is not None or args.end is not None or symbols):
        lines = None  # rows are selected below: the engine's row no longer maps to a line
    hours = market_hours(s)
    given = len(bars)
    bars = _select(bars, args.start, args.end, symbols, hours, interval_seconds(args.interval) * 1_000_000)
    if len(bars) != given:
        lines = None  # rows were dropped: the engine's row no longer maps to a line
    if len(bars) == 0:
        raise UsageError(
            f"no {args.interval} bars in {source} for the selected symbols and time range"
            + (f" inside the {hours.name} sessions (MARKET_CALENDAR)" if hours else "")
        )
    print(f"train: {len(bars):,} bars from {source}: computing features ...", flush=True)
    try:
        ds = build_dataset(bars, args.interval, args.horizon, indicators=[spec.cls for spec in indicators])
    except BarError as e:
        where = f"{args.input} line {lines[e.row]}: " if lines is not None and e.row is not None else ""
        raise UsageError(f"{where}{e}") from None
    params = TrainParams(
        rounds=args.rounds, max_depth=args.max_depth, eta=args.eta, seed=args.seed, threads=args.threads
    )
    print(f"train: {len(ds.ts):,} rows: {args.rounds} boosting rounds ...", flush=True)
    try:
        trained = train(ds, features, args.holdout, params, args.name, source, indicators)
    except ValueError as e:
        most = max((ds.symbols.count(sym) for sym in set(ds.symbols)), default=0)
        raise UsageError(
            f"{e}; {len(ds.ts):,} bars, at most {most:,} per symbol — the full feature set "
            "needs 200 bars of lookback per symbol (sma_200_rel): use more history or "
            "--exclude sma_200_rel,sma_50_rel"
        ) from None
    print(report(trained.metadata))

    from .. import registry
    from .models import registry_errors

    meta = trained.metadata
    with registry_errors():
        path, new = registry.register(s, trained)
        print(
            f"model     {meta['name']} {meta['version']} {'registered' if new else 'already registered'}: "
            f"{path} + models table"
        )
        if args.activate:
            registry.activate(s, meta["version"])
            print(f"active    {meta['name']} {meta['version']} (announced on {s.topic(registry.MODELS_TOPIC)})")
        else:
            print(f"          activate with: ticktape models activate {meta['version']}")
    return 0

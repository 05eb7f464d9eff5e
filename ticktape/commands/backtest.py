"""`ticktape backtest`: run a period through bars, indicators, predict, strategy, risk,
execution and portfolio; store, print and report the run.

    ticktape backtest [--from 2026-11-20T14:00] [--to 2026-11-20T15:00] [--symbols AAPL,MSFT]
        [--model VERSION|DIR] [--config risk.yaml] [--mode inprocess|kafka]
        [--source topic|db|csv] [--input FILE] [--bars INTERVAL]
        [--report out.html] [--sweep STRATEGY_ENTER_P=0.55,0.6 ...] [--jobs N] [--keep]
        [--check-live] [--as-run]
    ticktape backtest compare RUN_A RUN_B
    ticktape backtest list [--limit N] | show RUN

RUN: a stored run's id or a unique prefix of it.

Input: ticks from the live md.ticks topic (TOPIC_PREFIX) over [--from, --to] (default:
all of it), the ticks table (--source db) or a CSV file (--source csv --input FILE), split
into md.ticks's partitions as the live producers split them; or bars: --bars INTERVAL
reads md.bars.<INTERVAL> or the bars table, and a CSV holds bars when its header has a
time column (time, Date or Datetime, or an unnamed first one) and open, high, low, close,
volume, in any case (Yahoo's files; Adj Close and other columns are ignored). A file's
bars are of --bars, else of their shortest time step (1d for daily bars); without a
symbol column they are the one symbol --symbols names, else the file's stem. --from and
--to select bars by window start. Bars run in-process only, at their own interval
(BAR_INTERVALS and STRATEGY_INTERVAL become it), fill at the next bar's open
(EXEC_MARKET_DATA=bars), with the typical price as VWAP and a trade count of 0.
Model: --model (a registry version or prefix, or a model directory), else the registry's
active one (none: no predictions, no trades). Parameters: the settings (env vars) — bar
intervals and grace, STRATEGY_*, EXEC_*, STARTING_CASH, SYMBOLS (the risk desk's
universe: --symbols narrows it and the input; a CSV's universe is its own symbols) — and
the risk file (--config, else RISK_CONFIG).

Modes: ``inprocess`` runs the pure core over the events; ``kafka`` runs the real Faust
worker in the namespace ``bt.<run_id>.`` (topics deleted afterwards unless --keep).  Both
give the same events.  Every run is stored in ``backtest_runs`` / ``backtest_equity`` /
``backtest_trades`` (never in a live table).  ``--sweep`` runs one in-process backtest per
combination of values, in parallel (--jobs, default: every core).  ``--check-live``
compares the run's events with what the live pipeline published for the period.

Figures: see ``ticktape.core.performance`` (Sharpe/Sortino annualized per strategy
interval, risk-free rate 0; win rate over fills that reduce a position; turnover =
traded notional / mean equity; CAGR, Sharpe and Sortino n/a on an equity curve shorter
than 30 days, where annualizing means nothing).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..cli import UsageError
from ..config import REPO_ROOT, ConfigError, Settings, _convert, settings
from ..core.intervals import interval_seconds
from ..core.performance import annualized_note, display, num as _num, pct as _pct
from .produce import parse_time

if TYPE_CHECKING:
    from ..core.backtest import Result

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SWEEP_PREFIXES = ("strategy_", "exec_")
SWEEP_NAMES = ("starting_cash",)


def register(sub):
    paragraphs = __doc__.split("\n\n")
    p = sub.add_parser(
        "backtest",
        help="run a period through the whole pipeline, store and report it",
        description=paragraphs[0],
        epilog=paragraphs[2],
    )
    p.add_argument(
        "action",
        nargs="*",
        metavar="compare RUN_A RUN_B | list | show RUN",
        help="compare two stored runs, list the stored runs, show one (else: run a backtest); "
        "RUN: a run id or a unique prefix",
    )
    p.add_argument("--limit", type=int, default=20, help="list: the N latest runs (default 20)")
    p.add_argument(
        "--from", dest="start", type=parse_time, help="first event time, ISO-8601 (inclusive; default: the first tick)"
    )
    p.add_argument(
        "--to", dest="end", type=parse_time, help="last event time, ISO-8601 (inclusive; default: the last tick)"
    )
    p.add_argument("--symbols", help="only these symbols (comma/space separated; default SYMBOLS)")
    p.add_argument("--model", help="model version (or a unique prefix); default: the active one")
    p.add_argument("--config", help="risk limits YAML (default RISK_CONFIG or config/risk.yaml)")
    p.add_argument("--mode", choices=("inprocess", "kafka"), default="inprocess", help="default inprocess")
    p.add_argument(
        "--source",
        choices=("topic", "db", "csv"),
        default="topic",
        help="the md.ticks topic (default), the ticks table, or a CSV file (--input); "
        "with --bars: md.bars.<INTERVAL> or the bars table",
    )
    p.add_argument(
        "--input",
        metavar="FILE",
        help="--source csv: ticks (symbol,ts,price|bid,...) or bars (time,symbol,open,high,low,close,"
        "volume, or Yahoo's Date|Datetime,Open,High,Low,Close[,Adj Close],Volume; any case); "
        "told apart by the header",
    )
    p.add_argument(
        "--bars",
        metavar="INTERVAL",
        help="backtest bars of INTERVAL (e.g. 1m, 1d): --source topic/db read them; a CSV's bars "
        "default to their shortest time step.  Bars run in-process at their interval and "
        "fill at the next bar's open",
    )
    p.add_argument(
        "--report",
        help="write an interactive HTML report here (self-contained, opens offline): "
        "candles with the fills and indicators, equity, drawdown, positions",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="PARAM=V1,V2,...",
        help="one in-process run per value (repeat for a grid); PARAM: a STRATEGY_*, EXEC_* setting or STARTING_CASH",
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel sweep runs (default: cores)")
    p.add_argument("--keep", action="store_true", help="kafka mode: keep the bt.<run_id>.* topics")
    p.add_argument(
        "--check-live",
        action="store_true",
        help="compare the events with those the live pipeline published for the period",
    )
    p.add_argument(
        "--as-run",
        action="store_true",
        help="the settings `ticktape run` gives its pipeline where the environment leaves them "
        "at their defaults (1-second strategy bars, fills on the next bar)",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="kafka mode: seconds to wait for the worker")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.action:
        verb, rest = args.action[0], args.action[1:]
        if verb == "compare" and len(rest) == 2:
            return compare(*rest)
        if verb == "list" and not rest:
            return list_runs(args.limit)
        if verb == "show" and len(rest) == 1:
            return show(rest[0])
        raise UsageError(
            f"backtest {' '.join(args.action)!r}: expected `backtest compare RUN_A RUN_B`, "
            "`backtest list`, `backtest show RUN` or options only"
        )
    return backtest(args)


# --- arguments -----------------------------------------------------------------------


def _symbols(text: str | None, s: Settings) -> tuple[str, ...]:
    if text is None:
        return tuple(s.symbol_list)
    symbols = tuple(sorted({x for x in text.replace(",", " ").split() if x}))
    if not symbols:
        raise UsageError("--symbols is empty")
    return symbols


def setting_field(name: str):
    """The Settings field called ``name`` (``STRATEGY_ENTER_P`` or ``strategy_enter_p``), or None."""
    name = name.strip()
    return next((f for f in fields(Settings) if f.name == name.lower() or f.metadata["env"] == name.upper()), None)


def parse_sweep(specs: list[str]) -> list[dict]:
    """Every combination of the --sweep values, as Settings overrides (in given order)."""
    if not specs:
        return []
    axes: list[tuple[str, list]] = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        f = setting_field(name)
        if not sep or not values.strip():
            raise UsageError(f"--sweep {spec!r}: expected PARAM=V1,V2,...")
        if f is None or not (f.name.startswith(SWEEP_PREFIXES) or f.name in SWEEP_NAMES):
            raise UsageError(f"--sweep {spec!r}: {name} is not a STRATEGY_*, EXEC_* setting or STARTING_CASH")
        if any(f.name == a[0] for a in axes):
            raise UsageError(f"--sweep names {f.metadata['env']} twice")
        try:
            axes.append((f.name, [_convert(v.strip(), f.type, f.metadata["env"]) for v in values.split(",")]))
        except ConfigError as e:
            raise UsageError(f"--sweep {spec!r}: {e}") from None
    return [dict(zip([a[0] for a in axes], combo)) for combo in itertools.product(*[a[1] for a in axes])]


def make_setup(s: Settings, symbols: tuple[str, ...], risk_path: str | None):
    """The run's Setup from settings; a bad value → UsageError naming it."""
    import yaml

    from ..api import load_indicators, load_strategy, strategy_config
    from ..core.backtest import Setup
    from ..market_calendar import market_hours
    from ..risk_config import exec_config, load_risk_limits, risk_config_path

    path = Path(risk_path) if risk_path else risk_config_path(s)
    if s.exec_market_data not in ("ticks", "bars"):
        raise UsageError(f"EXEC_MARKET_DATA must be ticks or bars, got {s.exec_market_data!r}")
    try:
        limits = load_risk_limits(path).with_market_hours(market_hours(s))
        return Setup(
            tuple(s.interval_list),
            s.bar_grace_ms * 1000,
            strategy_config(s),
            exec_config(s),
            limits,
            yaml.safe_load(path.read_text()),
            s.starting_cash,
            symbols,
            s.exec_market_data,
            s.risk_idle_ms * 1000,
            s.risk_max_pending,
            load_strategy(s),
            load_indicators(s),
        )
    except ConfigError as e:
        raise UsageError(str(e)) from None


def code_version() -> str:
    """The package version, the git commit and whether the code differs from it."""
    from .. import __version__

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ticktape", "stream_processors"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"


def load_model(s: Settings, version: str | None):
    """(Model, metadata, artifact) of a version (or unique prefix) in the registry, or of a
    model directory (``metadata.json`` + ``model.ubj``, the registry's files); None when no
    version is given and none is active (or there is no database to ask)."""
    import psycopg

    from ..core.ml import Model, ModelMismatch
    from ..registry import ARTIFACT_FILE, METADATA_FILE, RegistryError, get, list_models
    from .models import registry_errors
    from ..api import load_indicators

    indicators = load_indicators(s)  # a model trained on user indicators needs them (ConfigError: exit 2)

    if version is not None and (Path(version) / METADATA_FILE).is_file():
        try:
            meta = json.loads((Path(version) / METADATA_FILE).read_text())
            artifact = (Path(version) / ARTIFACT_FILE).read_bytes()
            return Model.load(artifact, meta, indicators), meta, artifact
        except (OSError, ValueError) as e:  # ModelMismatch and bad JSON are ValueErrors
            raise UsageError(f"model {version}: {e}") from None
    if version is None and not s.database_url:
        return None
    with registry_errors():
        if version is None:
            try:
                active = [r for r in list_models(s) if r["active"]]
            except psycopg.errors.UndefinedTable as e:  # a database without models yet
                log.debug("no model registry: %s", e)
                return None
            if not active:
                return None
            version = active[0]["version"]
        try:
            meta, artifact, _ = get(s, version)
            return Model.load(artifact, meta, indicators), meta, artifact
        except (RegistryError, ModelMismatch) as e:
            raise UsageError(str(e)) from None


# --- input ---------------------------------------------------------------------------


@dataclass
class Market:
    """A backtest's input: ticks per md.ticks partition (each in its order), or closed bars
    of one interval (``bars``, by event time; ``ticks`` is then empty)."""

    where: str  # the source, for messages
    ticks: dict[int, list[dict]]
    bars: list[dict] | None = None
    interval: str | None = None  # the bars'

    @property
    def size(self) -> int:
        return sum(map(len, self.ticks.values())) if self.bars is None else len(self.bars)

    @property
    def symbols(self) -> tuple[str, ...]:
        events = self.bars if self.bars is not None else (t for v in self.ticks.values() for t in v)
        return tuple(sorted({e["symbol"] for e in events}))


def by_partition(ticks) -> dict[int, list[dict]]:
    """Ticks split into md.ticks's partitions (catalog count) as the live producers split them."""
    from ticktape import kafka_clients
    from ticktape.core.replay import partition_for

    n = kafka_clients.topic_spec("md.ticks").partitions
    out: dict[int, list[dict]] = {p: [] for p in range(n)}
    for t in ticks:
        out[partition_for(t["symbol"], n)].append(t)
    return out


def read_ticks(s: Settings, source: str, start: int, end: int, symbols: set[str] | None) -> dict[int, list[dict]]:
    """The period's ticks per md.ticks partition (catalog count), each in its order."""
    from producers.replay import read_db, read_topic
    from ticktape import kafka_clients
    from ticktape.core.bars import is_heartbeat
    from ticktape.core.replay import partition_for

    if source == "db":
        return by_partition(read_db(s, "ticks", "1m", start, end, symbols))
    n = kafka_clients.topic_spec("md.ticks").partitions
    out: dict[int, list[dict]] = {p: [] for p in range(n)}
    topic = s.topic("md.ticks")
    try:
        same = len(kafka_clients.topic_metadata(s, topic).partitions) == n
    except KeyError:
        raise UsageError(f"topic {topic} does not exist (nothing recorded yet?)") from None
    for rec in read_topic(s, topic, start, end, symbols, decode=True):
        assert rec.event is not None  # decode=True: each record has its event
        if same:
            out[rec.partition].append(rec.event)
        elif not is_heartbeat(rec.event):  # a heartbeat is for its partition: it has no other
            out[partition_for(rec.event["symbol"], n)].append(rec.event)
    return out


def _window(bars, start: int | None, end: int | None, symbols: set[str] | None) -> list[dict]:
    """Bars with window start in [start, end] (of ``symbols``), by event time then symbol."""
    keep = [
        b
        for b in bars
        if (start is None or b["window_start"] >= start)
        and (end is None or b["window_start"] <= end)
        and (symbols is None or b["symbol"] in symbols)
    ]
    return sorted(keep, key=itemgetter("ts", "symbol"))


def read_bars(
    s: Settings, source: str, interval: str, start: int | None, end: int | None, symbols: set[str] | None
) -> Market:
    """Bars of ``interval`` from the ``bars`` table or ``md.bars.<interval>`` (a redelivered
    bar counts once), window start in [start, end]."""
    from producers.replay import read_db, read_topic

    # the sources select by event time (window end): read a window further, cut by start
    last = None if end is None else end + interval_seconds(interval) * 1_000_000
    if source == "db":
        events, where = read_db(s, "bars", interval, start, last, symbols), f"the bars table ({interval})"
    else:
        where = s.topic(f"md.bars.{interval}")
        # cast: decode=True, so each record has its event
        events = (cast(dict, r.event) for r in read_topic(s, where, start, last, symbols, decode=True, event="bar"))
    unique = {b["event_id"]: b for b in events}
    return Market(where, {}, _window(unique.values(), start, end, symbols), interval)


def table_market(
    name: str, kind: str, events: list[dict], start: int | None, end: int | None, symbols: set[str] | None
) -> Market:
    """The Market of a table's events (``producers.replay.read_table``): ticks with event
    time, bars with window start in [start, end]."""
    if kind == "bar":
        return Market(name, {}, _window(events, start, end, symbols), events[0]["interval"])
    return Market(
        name,
        by_partition(
            t
            for t in events
            if (start is None or t["ts"] >= start)
            and (end is None or t["ts"] <= end)
            and (symbols is None or t["symbol"] in symbols)
        ),
    )


def in_sessions(market: Market, hours) -> Market:
    """The market's events inside the sessions of ``hours`` (a MarketHours; None: all):
    closed days and hours are skipped as the live sources skip them.  A bar is kept when
    its window meets a session (a daily bar: a trading day); heartbeats stay."""
    from ..core.bars import is_heartbeat

    if hours is None:
        return market
    if market.bars is not None:
        return replace(market, bars=[b for b in market.bars if hours.overlaps(b["window_start"], b["window_end"])])
    return replace(
        market, ticks={p: [t for t in v if is_heartbeat(t) or hours.is_open(t["ts"])] for p, v in market.ticks.items()}
    )


def read_market(s: Settings, args) -> Market:
    """The command's input (--source, --input, --bars, --from/--to, --symbols)."""
    from producers.replay import read_csv

    wanted = set(_symbols(args.symbols, s)) if args.symbols else None
    if args.source != "csv":
        if args.bars is not None:
            return read_bars(s, args.source, args.bars, args.start, args.end, wanted)
        ticks = read_ticks(s, args.source, args.start, args.end, wanted)
        return Market("the ticks table" if args.source == "db" else s.topic("md.ticks"), ticks)
    # a one-symbol file without a symbol column: the one --symbols names, else the file's stem
    symbol = next(iter(wanted)) if wanted and len(wanted) == 1 else Path(args.input).stem
    kind, events = read_csv(args.input, args.bars, symbol)
    if kind == "tick" and args.bars is not None:
        raise UsageError(f"{args.input} holds ticks: drop --bars")
    return table_market(args.input, kind, events, args.start, args.end, wanted)


# --- storage -------------------------------------------------------------------------


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _us(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(microseconds=1)


def store(s: Settings, row: dict, result) -> None:
    """One run: its row, equity curve and trades, in one transaction."""
    import psycopg
    from psycopg.types.json import Jsonb

    from sinks import schema

    schema.migrate(s)
    with psycopg.connect(s.database_url) as conn:
        conn.execute(
            "INSERT INTO backtest_runs (run_id, mode, period_start, period_end, symbols, parameters, code_version, "
            "model_version, data_fingerprint, results_sha256, metrics, counts, strategy, strategy_params, "
            "strategy_sha256) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                row["run_id"],
                row["mode"],
                _dt(row["period_start"]),
                _dt(row["period_end"]),
                list(row["symbols"]),
                Jsonb(row["parameters"]),
                row["code_version"],
                row["model_version"],
                row["data_fingerprint"],
                row["results_sha256"],
                Jsonb(row["metrics"]),
                Jsonb(row["counts"]),
                row["strategy"]["class"],
                Jsonb(row["strategy"]["params"]),
                row["strategy"]["source_sha256"],
            ),
        )
        cur = conn.cursor()
        with cur.copy(
            "COPY backtest_equity (run_id, ts, equity, cash, market_value, gross_exposure, "
            "realized_pnl, unrealized_pnl, drawdown) FROM STDIN"
        ) as cp:
            for r in result.equity:
                cp.write_row(
                    (
                        row["run_id"],
                        _dt(r["ts"]),
                        r["equity"],
                        r["cash"],
                        r["market_value"],
                        r["gross_exposure"],
                        r["realized_pnl"],
                        r["unrealized_pnl"],
                        r["drawdown"],
                    )
                )
        with cur.copy(
            "COPY backtest_trades (run_id, event_id, order_id, ts, symbol, side, quantity, price, "
            "commission, slippage_bps) FROM STDIN"
        ) as cp:
            for t in result.trades:
                cp.write_row(
                    (
                        row["run_id"],
                        t["event_id"],
                        t["order_id"],
                        _dt(t["ts"]),
                        t["symbol"],
                        t["side"],
                        t["quantity"],
                        t["price"],
                        t["commission"],
                        t["slippage_bps"],
                    )
                )


def load_run(s: Settings, run_id: str) -> dict:
    """The stored run whose id is ``run_id`` or starts with it (unique)."""
    import psycopg

    from sinks import schema

    cols = (
        "run_id",
        "created_at",
        "mode",
        "period_start",
        "period_end",
        "symbols",
        "parameters",
        "code_version",
        "model_version",
        "data_fingerprint",
        "results_sha256",
        "metrics",
        "counts",
        "strategy",
        "strategy_params",
        "strategy_sha256",
    )
    if not run_id:
        raise UsageError("a run id (or a prefix of one) must not be empty")
    schema.migrate(s)  # a database of runs stored before the strategy columns
    with psycopg.connect(s.database_url) as conn:
        found = conn.execute(
            f"SELECT {', '.join(cols)} FROM backtest_runs WHERE starts_with(run_id, %s) ORDER BY run_id LIMIT 6",
            (run_id,),
        ).fetchall()
    exact = [r for r in found if r[0] == run_id]
    if not found:
        raise UsageError(f"no backtest run {run_id!r} (ticktape backtest list shows them)")
    if len(found) > 1 and not exact:
        raise UsageError(
            f"backtest run prefix {run_id!r} is ambiguous: "
            f"{', '.join(r[0] for r in found[:5])}{' ...' if len(found) > 5 else ''}"
        )
    row = dict(zip(cols, (exact or found)[0]))
    row["period_start"], row["period_end"] = _us(row["period_start"]), _us(row["period_end"])
    return row


def _database(s: Settings) -> None:
    if not s.database_url:
        raise UsageError("no database: set DATABASE_URL or run `ticktape stack up`")


def list_runs(limit: int) -> int:
    import psycopg

    if limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    s = settings()
    _database(s)
    with psycopg.connect(s.database_url) as conn:
        rows = conn.execute(
            "SELECT run_id, created_at, mode, period_start, period_end, symbols, model_version, "
            "metrics FROM backtest_runs ORDER BY created_at DESC, run_id LIMIT %s",
            (limit,),
        ).fetchall()
    if not rows:
        print("no stored backtest runs (ticktape backtest runs one)")
        return 0
    print(
        f"{'run':<12}  {'created (UTC)':<19}  {'mode':<9} {'period (UTC)':<39} {'symbols':>7}  "
        f"{'model':<12} {'return':>11} {'sharpe':>7}"
    )
    for run_id, created, mode, start, end, symbols, model, m in rows:
        print(
            f"{run_id:<12}  {created:%Y-%m-%d %H:%M:%S}  {mode:<9} {start:%Y-%m-%d %H:%M:%S} .. "
            f"{end:%Y-%m-%d %H:%M:%S} {len(symbols):>7}  {str(model or '-'):<12} {_pct(m['total_return']):>11} "
            f"{_num(m['sharpe']):>7}"
        )
    return 0


def show(run_id: str) -> int:
    s = settings()
    _database(s)
    row = load_run(s, run_id)
    print(f"backtest {row['run_id']} ({row['mode']}, created {row['created_at']:%Y-%m-%d %H:%M:%S} UTC)")
    print(f"  period       {_iso(row['period_start'])[:19]} .. {_iso(row['period_end'])[:19]}")
    print(f"  symbols      {' '.join(row['symbols'])}")
    print(f"  model        {row['model_version'] or '-'}   code {row['code_version']}")
    print(f"  input        fingerprint {row['data_fingerprint'][:16]}   results sha256 {row['results_sha256'][:16]}")
    for line in figure_lines(row["metrics"], row["counts"]):
        print(line)
    for k, v in sorted(_flat(row["parameters"]).items()):
        print(f"  parameter {k} = {json.dumps(v)}")
    return 0


# --- output --------------------------------------------------------------------------


def figure_lines(m: dict, c: dict) -> list[str]:
    rej = c["rejections"]
    by_reason = ", ".join(f"{k} {v}" for k, v in rej.items()) or "none"
    d = {k: display(k, v) for k, v in m.items()}
    note = annualized_note(m)
    return [
        f"  total return {d['total_return']:>14}   CAGR {d['cagr']}",
        f"  Sharpe {d['sharpe']:>20}   Sortino {d['sortino']}",
        f"  max drawdown {d['max_drawdown']:>14}   win rate {d['win_rate']} of {m['closing_trades']} closing trades",
        f"  turnover {d['turnover']:>18}   end equity {d['end_equity']}",
        f"  orders {c['orders']}   fills {c['fills']}   rejections {sum(rej.values())} ({by_reason})",
    ] + ([f"  ({note})"] if note else [])


def _iso(us: int) -> str:
    return _dt(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the run -------------------------------------------------------------------------


def as_run(s: Settings) -> Settings:
    """``s`` with the values `ticktape run` sets for settings still at their defaults."""
    from ..config import run_defaults

    by_env = {f.metadata["env"]: f for f in fields(Settings)}
    wanted = run_defaults()
    return replace(
        s,
        **{
            by_env[k].name: _convert(v, by_env[k].type, k)
            for k, v in wanted.items()
            if getattr(s, by_env[k].name) == by_env[k].default
        },
    )


@dataclass
class Plan:
    """A backtest ready to run: its settings, input (ticks: with the flush ticks), one
    Setup per sweep variant, the model, the period and the stored row's common part."""

    settings: Settings
    market: Market
    setups: list
    model: object
    meta: dict | None
    artifact: bytes | None
    start: int
    end: int
    live_cutoff: int | None  # ticks: what the live pipeline has surely closed
    common: dict


def prepare(
    s: Settings,
    market: Market,
    symbols: tuple[str, ...],
    model: str | None,
    risk_path: str | None,
    start: int | None,
    end: int | None,
    mode: str = "inprocess",
    variants: list[dict] | None = None,
) -> Plan:
    """Settings, input and model into a Plan: the one path of the command and of
    ``ticktape.backtest.run``.  Bars run at their own interval: BAR_INTERVALS and
    STRATEGY_INTERVAL become it, and fills take the next bar's open (EXEC_MARKET_DATA=bars)."""
    from ..core import backtest as bt
    from ..market_calendar import market_hours

    hours = market_hours(s)
    market = in_sessions(market, hours)
    if market.bars is not None:
        assert market.interval is not None  # bars always come with their interval
        s = replace(s, bar_intervals=market.interval, strategy_interval=market.interval, exec_market_data="bars")
    setups = [make_setup(replace(s, **o), symbols, risk_path) for o in variants or [{}]]
    loaded = load_model(s, model)
    model, meta, artifact = loaded if loaded else (None, None, None)
    if market.size == 0:
        what = f"{market.interval} bars" if market.bars is not None else "ticks"
        raise UsageError(
            f"no {what} from {_iso(start) if start is not None else 'the start'} "
            f"to {_iso(end) if end is not None else 'the end'} in {market.where}"
            + (f" inside the {hours.name} sessions (MARKET_CALENDAR)" if hours else "")
        )
    if market.bars is not None:  # the period: the bars' windows
        start, end = market.bars[0]["window_start"], market.bars[-1]["ts"]
        fingerprint, live_cutoff = bt.data_fingerprint({0: market.bars}, bt.BAR_FIELDS), None
    else:  # without --from/--to: the whole recording
        ticks = market.ticks
        lasts = [v[-1]["ts"] for v in ticks.values() if v]
        start = min(v[0]["ts"] for v in ticks.values() if v) if start is None else start
        end = max(lasts) if end is None else end
        # what the live pipeline has surely closed: every window ending a grace before the last
        # tick of every partition (the flush ticks close the rest in the backtest only)
        live_cutoff = min(end + 1, min(lasts) - s.bar_grace_ms * 1000)
        fingerprint = bt.data_fingerprint(ticks)
        for t in bt.flush_ticks(end, setups[0], len(ticks)):
            ticks[t["seq"]].append(t)
    common = {
        "mode": mode,
        "period_start": start,
        "period_end": end,
        "symbols": list(symbols),
        "code_version": code_version(),
        "model_version": meta["version"] if meta else None,
        "data_fingerprint": fingerprint,
    }
    return Plan(s, market, setups, model, meta, artifact, start, end, live_cutoff, common)


def simulate(plan: Plan, setup):
    """Every event of an in-process run: bars fill at the next bar's open (``run_bars``)."""
    from ..core import backtest as bt

    if plan.market.bars is not None:
        return bt.run_bars(plan.market.bars, setup, plan.model)
    return bt.run(plan.market.ticks, setup, plan.model)


def finish(plan: Plan, setup, events, run_id: str, save: bool = True) -> tuple[dict, Result]:
    """(the run's row, its ``core.backtest.Result``), stored when ``save``."""
    from ..core import backtest as bt

    result = bt.summarize(events, setup, plan.start)
    row = run_row(plan, setup, run_id, result)
    if save:
        store(plan.settings, row, result)
    return row, result


def run_row(plan: Plan, setup, run_id: str, result) -> dict:
    """The ``backtest_runs`` row of one run: what ran (parameters, strategy) and its results."""
    return plan.common | {
        "run_id": run_id,
        "parameters": setup.parameters(),
        "strategy": setup.strategy_spec.record(),
        "results_sha256": result.sha256,
        "metrics": result.metrics,
        "counts": result.counts,
    }


def check_interval(text: str, what: str) -> None:
    try:
        interval_seconds(text)
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None


def backtest(args) -> int:
    s = as_run(settings()) if args.as_run else settings()
    if args.start is not None and args.end is not None and args.end < args.start:
        raise UsageError("--to is before --from")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if (args.source == "csv") != (args.input is not None):
        raise UsageError("--input FILE goes with --source csv (and only with it)")
    if args.bars is not None:
        check_interval(args.bars, "--bars")
    sweep = parse_sweep(args.sweep)
    if sweep and args.mode == "kafka":
        raise UsageError("--sweep runs in-process: drop --mode kafka")
    if args.keep and args.mode != "kafka":
        raise UsageError("--keep is for --mode kafka")
    if args.report and not args.report.endswith((".html", ".htm")):
        raise UsageError(f"--report {args.report}: expected an .html file name")
    from ..api import load_strategy

    load_strategy(s)  # a bad STRATEGY / STRATEGY_PARAMS before any input is read
    if not s.database_url:
        raise UsageError("no database to store the run: set DATABASE_URL or run `ticktape stack up`")
    market = read_market(s, args)
    if market.bars is not None and args.mode == "kafka":
        raise UsageError("bars run in-process only: drop --mode kafka")
    if market.bars is not None and args.check_live:
        raise UsageError("--check-live compares a period of md.ticks: it does not apply to bars")
    # the risk desk's universe: --symbols, else a file's own symbols, else SYMBOLS
    symbols = _symbols(args.symbols, s) if args.symbols or args.source != "csv" else market.symbols
    variants = sweep or [{}]
    plan = prepare(s, market, symbols, args.model, args.config, args.start, args.end, args.mode, variants)
    meta = plan.meta
    if plan.model is None and plan.setups[0].strategy_spec.cls.input_kind() == "prediction":
        print("backtest: no model given and none active: no predictions, so no trades", file=sys.stderr)
    what = f"{market.size:,} {market.interval} bars" if market.bars is not None else f"{market.size:,} ticks"
    print(
        f"backtest: {what}, {_iso(plan.start)} .. {_iso(plan.end)}, {len(symbols)} symbols, "
        f"model {meta['name'] + ' ' + meta['version'] if meta else 'none'}, {args.mode}"
    )

    if sweep:
        return _sweep(plan, args, variants)
    setup = plan.setups[0]
    run_id = new_run_id()
    if args.mode == "kafka":
        from .. import backtest_kafka

        try:
            risk = str(Path(args.config).resolve()) if args.config else s.risk_config
            events = backtest_kafka.run(
                replace(s, symbols=" ".join(symbols), risk_config=risk),
                run_id,
                # cast: load_model gives the metadata with its artifact
                market.ticks,
                (meta, cast(bytes, plan.artifact)) if meta else None,
                keep=args.keep,
                timeout_s=args.timeout,
                say=print,
            )
        except backtest_kafka.KafkaModeError as e:
            raise SystemExit(f"ticktape: backtest {run_id}: {e}") from None
    else:
        print(
            f"backtest {run_id}: {market.size:,} {'ticks' if market.bars is None else f'{market.interval} bars'} "
            f"from {market.where} through the pipeline, in-process ...",
            flush=True,
        )
        events = simulate(plan, setup)
    row, result = finish(plan, setup, events, run_id)
    print(
        f"backtest {row['run_id']} stored: {len(result.equity)} equity points, {len(result.trades)} trades; "
        f"results sha256 {result.sha256[:16]}"
    )
    for line in figure_lines(result.metrics, result.counts):
        print(line)
    if args.report:
        path = write_report(
            args.report, row, result, setup, events["bar"], events["indicator_set"], events["order_rejected"]
        )
        print(f"report {path}")
    if args.check_live:
        assert plan.live_cutoff is not None  # ticks: --check-live with bars is refused above
        return check_live(s, events, plan.start, plan.live_cutoff)
    return 0


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def write_report(path, row: dict, result, setup, bars, indicators, rejections=()) -> Path:
    """The run's HTML report (``ticktape.report``) with the strategy interval's bars and indicator sets."""
    from .. import report

    iv = setup.strategy.interval
    return report.write(
        path,
        row,
        result.equity,
        result.trades,
        rejections,
        [b for b in bars if b["interval"] == iv],
        [x for x in indicators if x["interval"] == iv],
        width_us=setup.width_us,
        fills_on_bars=setup.market_data == "bars",
    )


# --- sweeps --------------------------------------------------------------------------

_SHARED: dict = {}  # what forked sweep workers read: the input and analytics, computed once


def _sweep_one(i: int):
    from ..core import backtest as bt

    setup, start = _SHARED["setups"][i], _SHARED["start"]
    return bt.summarize(bt.trading(_SHARED["ticks"], _SHARED["analytics"], setup), setup, start)


def _sweep(plan: Plan, args, variants) -> int:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ..core import backtest as bt
    from ..core import pipeline

    setups, market = plan.setups, plan.market
    if market.bars is not None:  # as run_bars: no ticks, fills on the bars
        analytics = pipeline.from_bars(
            market.bars, setups[0].intervals, plan.model, [spec.cls for spec in setups[0].indicators]
        )
    else:
        analytics = bt.analytics(market.ticks, setups[0], plan.model)
    _SHARED.update(ticks=market.ticks, analytics=analytics, setups=setups, start=plan.start)
    jobs = min(args.jobs, len(setups))
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_sweep_one, range(len(setups))))
    else:
        results = [_sweep_one(i) for i in range(len(setups))]
    _SHARED.clear()
    names = list(variants[0])
    print(
        "  ".join(f"{n.upper():>16}" for n in names) + f"  {'run':<12} {'return':>11} {'Sharpe':>9} "
        f"{'max dd':>10} {'orders':>6} {'rejected':>8}"
    )
    for overrides, setup, result in zip(variants, setups, results):
        run_id = new_run_id()
        row = run_row(plan, setup, run_id, result)
        store(plan.settings, row, result)
        m = result.metrics
        print(
            "  ".join(f"{overrides[n]!s:>16}" for n in names) + f"  {run_id:<12} {_pct(m['total_return']):>11} "
            f"{_num(m['sharpe']):>9} {_pct(m['max_drawdown']):>10} {m['orders']:>6} {m['rejections']:>8}"
        )
        if args.report:
            path = Path(args.report)
            write_report(
                path.with_name(f"{path.stem}-{run_id}{path.suffix}"),
                row,
                result,
                setup,
                [b for bars in analytics.bars.values() for b in bars],
                analytics.indicators,
            )
    return 0


# --- compare -------------------------------------------------------------------------


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def compare(a: str, b: str) -> int:
    s = settings()
    _database(s)
    ra, rb = load_run(s, a), load_run(s, b)
    a, b = ra["run_id"], rb["run_id"]
    print(f"{'':<16}{a:>28}{b:>28}")
    for key in ("mode", "model_version", "code_version", "strategy"):
        print(f"{key:<16}{str(ra[key]):>28}{str(rb[key]):>28}")
    print(f"{'period':<16}{_iso(ra['period_start'])[:19]:>28}{_iso(rb['period_start'])[:19]:>28}")
    print(f"{'':<16}{_iso(ra['period_end'])[:19]:>28}{_iso(rb['period_end'])[:19]:>28}")
    for key in ("total_return", "cagr", "max_drawdown", "win_rate"):
        print(f"{key:<16}{_pct(ra['metrics'][key]):>28}{_pct(rb['metrics'][key]):>28}")
    for key in ("sharpe", "sortino", "turnover"):
        print(f"{key:<16}{_num(ra['metrics'][key]):>28}{_num(rb['metrics'][key]):>28}")
    for key in ("end_equity", "closing_trades", "orders", "rejections"):
        print(f"{key:<16}{ra['metrics'][key]:>28,}{rb['metrics'][key]:>28,}")
    ran = [(key, ra[key], rb[key]) for key in ("strategy", "strategy_params", "strategy_sha256") if ra[key] != rb[key]]
    for key, va, vb in ran:  # the strategy first: the difference that matters most
        name = {
            "strategy": "strategy",
            "strategy_params": "strategy parameters",
            "strategy_sha256": "strategy source sha256",
        }[key]
        print(f"{name}: {_ran(va)} vs {_ran(vb)}")
    pa, pb = _flat(ra["parameters"]), _flat(rb["parameters"])
    diff = sorted(k for k in pa.keys() | pb.keys() if pa.get(k) != pb.get(k))
    for k in diff:
        print(f"parameter {k}: {json.dumps(pa.get(k))} vs {json.dumps(pb.get(k))}")
    diff += [key for key, _, _ in ran]
    same_data = ra["data_fingerprint"] == rb["data_fingerprint"]
    same = ra["results_sha256"] == rb["results_sha256"]
    print(
        f"input data: {'same' if same_data else 'different'}; parameters: "
        f"{'same' if not diff else f'{len(diff)} differ'}; equity and trades: {'identical' if same else 'differ'}"
    )
    return 0


def _ran(value) -> str:
    """A strategy column as compare prints it (None: stored before the column existed)."""
    if value is None:
        return "(not recorded)"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# --- against the live pipeline --------------------------------------------------------


def live_events(s: Settings, start: int, end: int) -> dict[str, list[dict]]:
    """What the live pipeline published with event time in [start, end], per event type.

    Each topic is read to its end: a derived topic is not in event-time order (a stage
    takes its input topics batch by batch), so its first event after ``end`` ends nothing."""
    from producers.replay import read_topic
    from ticktape import kafka_clients

    from ..backtest_kafka import output_topics

    out: dict[str, list[dict]] = {}
    existing = set(kafka_clients.admin(s).list_topics(timeout=10).topics)
    for name, event_type in sorted(output_topics(s).items()):
        if event_type is None or event_type == "tick" or s.topic(name) not in existing:
            continue
        out.setdefault(event_type, []).extend(
            # cast: decode=True, so each record has its event
            cast(dict, r.event)
            for r in read_topic(s, s.topic(name), start, None, decode=True)
            if r.ts <= end
        )
    return out


def compacted_types(s: Settings) -> set[str]:
    from ticktape import kafka_clients

    from ..backtest_kafka import output_topics

    return {t for name, t in output_topics(s).items() if kafka_clients.topic_spec(name).cleanup_policy == "compact"}


def last_per_key(events: list[dict]) -> list[dict]:
    """The last event of each (account, symbol) — what compaction keeps — by event time."""
    last = {}
    for e in sorted(events, key=lambda e: e["ts"]):
        last[(e.get("account"), e.get("symbol"))] = e
    return list(last.values())


# the events the risk stage's ordering holds back until every symbol has moved on and
# every earlier order is filled: at the end of a live run the last of them still wait
HELD_BACK = ("order", "order_rejected", "fill", "position", "equity", "risk_state")


def differences(
    live: dict[str, list[dict]], ours: dict[str, list[dict]], start: int, end: int, held_until: int | None = None
):
    """Per event type: (live count, backtest count, first difference or None), both sides
    limited to event time in [start, end] (HELD_BACK types: before ``held_until`` too)."""
    from ..core.backtest import canonical

    out = {}
    for event_type in sorted(set(live) | set(ours)):
        last = min(end, held_until - 1) if held_until is not None and event_type in HELD_BACK else end
        a = {e["event_id"]: canonical(e) for e in live.get(event_type, ()) if start <= e["ts"] <= last}
        b = {e["event_id"]: canonical(e) for e in ours.get(event_type, ()) if start <= e["ts"] <= last}
        first = None
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                first = (
                    f"{key}: only live"
                    if key not in b
                    else f"{key}: only in the backtest"
                    if key not in a
                    else f"{key}: live {a[key].decode()[:300]} != backtest {b[key].decode()[:300]}"
                )
                break
        out[event_type] = (len(a), len(b), first)
    return out


def check_live(s: Settings, events, start: int, cutoff: int) -> int:
    """Compare with the live topics up to ``cutoff``: the windows that lie wholly in the
    period (a window ending after --to may hold live ticks past it) and that the live
    watermark has closed; the trading book up to where the live portfolio got (its last
    Equity: later events may still wait in the risk stage for fills the live run never
    saw, where the backtest's flush ticks closed the last bars)."""
    live, ours = live_events(s, start, cutoff), dict(events.by_type)
    held_until = max((e["ts"] for e in live.get("equity", ())), default=None)
    print(
        f"live check: events from {_iso(start)} to {_iso(cutoff)}"
        + (f", the trading book to {_iso(held_until)} (excluded)" if held_until is not None else "")
    )
    for t in compacted_types(s):  # compaction may have dropped all but the last per key
        for side in (live, ours):
            side[t] = last_per_key(
                [
                    e
                    for e in side.get(t, ())
                    if start <= e["ts"] <= min(cutoff, cutoff if held_until is None else held_until - 1)
                ]
            )
    diffs = differences(live, ours, start, cutoff, held_until)
    bad = 0
    for event_type, (n_live, n_bt, first) in diffs.items():
        print(f"  {event_type:<16} live {n_live:>8}  backtest {n_bt:>8}  {'equal' if first is None else first}")
        bad += first is not None
    if bad:
        print(
            f"live check: {bad} event type(s) differ (the live run must start at --from with empty state, "
            f"with the model active throughout and the backtest's settings)"
        )
        return 1
    print("live check: every event equals the live pipeline's")
    return 0

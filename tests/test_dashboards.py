"""grafana/: the dashboards are valid Grafana 10+ JSON generated from build_dashboards.py;
every SQL query (panels and variables) runs against the real schema filled by the
pure core over simulated data and returns rows; every PromQL expression of the
dashboards and alert rules parses (promtool) and names only metrics the running
processes export."""
from __future__ import annotations

import importlib.util
import itertools
import json
import math
import re
import shutil
import subprocess
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import yaml
from pipeline import Pipeline, module_settings, new_database
from test_execution import Chain
from test_prometheus import _metric_names, _project_metrics, _rules

from ticktape.core.bars import BarAggregator
from ticktape.core.indicators import IndicatorState, indicator_event
from ticktape.core.intervals import interval_seconds
from ticktape.core.risk import RiskLimits
from ticktape.core.sim import MarketSimulator
from ticktape.risk_config import DEFAULT_RISK_CONFIG

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "grafana"
DASHBOARDS = ["market", "pipeline", "trading", "model"]
PROMTOOL = shutil.which("promtool")


def _build_module():
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboard(name: str) -> dict:
    return json.loads((GRAFANA / "dashboards" / f"{name}.json").read_text())


def _targets(ds_type: str):
    """(id, target) of every panel query of a datasource type, over all dashboards."""
    for name in DASHBOARDS:
        for p in _dashboard(name)["panels"]:
            for t in p["targets"]:
                if t["datasource"]["type"] == ds_type:
                    yield f"{name}/{p['id']}/{t['refId']} {p['title']}", t


def _variables(name: str) -> list[dict]:
    return _dashboard(name)["templating"]["list"]


# -- structure -----------------------------------------------------------------------------
def test_dashboard_files_are_the_build_scripts_output():
    build = _build_module()
    assert list(build.DASHBOARDS) == DASHBOARDS
    assert sorted(p.name for p in (GRAFANA / "dashboards").glob("*.json")) == sorted(f"{n}.json" for n in DASHBOARDS)
    for name in DASHBOARDS:
        assert (GRAFANA / "dashboards" / f"{name}.json").read_text() == build.render(name), \
            f"{name}.json is stale: run python grafana/build_dashboards.py"
    assert build.render("market") == build.render("market")  # deterministic


def test_dashboards_are_valid_for_grafana_10_with_provisioned_datasources():
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yml").read_text())
    datasources = {d["uid"]: d["type"] for d in provisioned["datasources"]}
    assert datasources == {"prometheus": "prometheus", "timescaledb": "grafana-postgresql-datasource"}
    uids = set()
    for name in DASHBOARDS:
        d = _dashboard(name)
        assert d["schemaVersion"] >= 36 and d["title"].startswith("ticktape / ")
        assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]) and d["uid"] not in uids
        uids.add(d["uid"])
        ids = [p["id"] for p in d["panels"]]
        assert ids == list(range(1, len(ids) + 1)), "panel ids unique"
        cells = set()
        var_names = [v["name"] for v in d["templating"]["list"]]
        assert len(var_names) == len(set(var_names))
        for v in d["templating"]["list"]:
            assert datasources[v["datasource"]["uid"]] == v["datasource"]["type"]
        for p in d["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
            cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cell & cells, f"{name}: panel {p['id']} overlaps another"
            cells |= cell
            assert datasources[p["datasource"]["uid"]] == p["datasource"]["type"]
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs))
            for t in p["targets"]:
                assert datasources[t["datasource"]["uid"]] == t["datasource"]["type"]
                text = t.get("rawSql") or t.get("expr")
                assert text, f"{name}/{p['title']}: empty query"
                used = set(re.findall(r"\$(?!__)(\w+)", text + p["title"]))
                assert used <= set(var_names), f"{name}/{p['title']}: undefined variables {used}"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    compose = (REPO / "docker" / "docker-compose.yml").read_text()
    assert f"../grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in compose


def test_dashboards_have_the_panels_and_variables_the_issue_asks_for():
    def titles(name):
        return " | ".join(p["title"] for p in _dashboard(name)["panels"]).lower()

    for name in ("market", "model"):
        assert [v["name"] for v in _variables(name)] == ["symbol", "interval"]
    for words in ("top 5", "current prices", "rsi 14", "macd", "sma 10/20/50/200", "volatility ranking",
                  "volume", "active symbols", "market average volatility", "market average rsi",
                  "data points in the last minute"):
        assert words in titles("market"), words
    for words in ("events out", "latency", "consumer lag", "errors", "dead letters", "sink rows"):
        assert words in titles("pipeline"), words
    for words in ("orders", "rejections by reason", "fills", "positions", "exposure", "equity curve",
                  "pnl", "kill switch"):
        assert words in titles("trading"), words
    for words in ("active model", "predictions per second", "inference latency", "p_up distribution",
                  "hit rate"):
        assert words in titles("model"), words
    rsi = next(p for p in _dashboard("market")["panels"] if p["title"] == "$symbol: RSI 14")
    steps = rsi["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 30, 70]
    assert rsi["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line+area"
    macd = next(p for p in _dashboard("market")["panels"] if "MACD" in p["title"])
    assert all(c in macd["targets"][0]["rawSql"] for c in ("macd_signal", "macd_hist"))


# -- SQL: every query on the real schema after a simulated run ------------------------------
SIM_SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "JPM", "XOM", "KO", "V"]
SIM_HOURS = 5
BAR_INTERVALS = ["1m", "5m"]


def _stand_in_prediction(ind: dict) -> dict | None:
    """A fixed logistic score of RSI 14, standing in for the model until the predict
    stage lands; everything downstream of it is the real trading core."""
    if ind["rsi_14"] is None:
        return None
    p_up = 1 / (1 + math.exp(-(ind["rsi_14"] - 50) / 8))
    return {"event_id": f"{ind['event_id']}:rsi-logistic:0", "symbol": ind["symbol"],
            "interval": ind["interval"], "ts": ind["ts"], "model_name": "rsi-logistic",
            "model_version": "0", "p_up": p_up, "horizon": 5, "features": {"rsi_14": ind["rsi_14"]},
            "close": ind["close"], "volatility_20": ind["volatility_20"]}  # Prediction v2, as ml.py


def simulated_run(start_us: int, end_us: int) -> dict[str, list[dict]]:
    """Events of every type: simulator -> bars -> indicators -> predictions -> strategy,
    risk, paper execution, portfolio (the pure core, as the pipeline runs it)."""
    sim = MarketSimulator(SIM_SYMBOLS, seed=7, tick_rate=6, start_us=start_us)
    ticks = list(itertools.takewhile(lambda t: t["ts"] < end_us, sim.ticks()))
    bars = BarAggregator(BAR_INTERVALS, grace_us=500_000).process(ticks).bars
    raw = yaml.safe_load(DEFAULT_RISK_CONFIG.read_text())
    raw["defaults"]["max_gross_exposure"] = 40_000  # tight enough that risk rejects some orders
    chain = Chain(RiskLimits.from_dict(raw))
    states: dict[tuple[str, str], IndicatorState] = {}
    out = defaultdict(list)
    out["tick"] = ticks
    for bar in bars:
        out["bar"].append(bar)
        state = states.setdefault((bar["symbol"], bar["interval"]), IndicatorState(bar["interval"]))
        ind = indicator_event(bar, state.update(bar))
        out["indicator_set"].append(ind)
        pred = _stand_in_prediction(ind)
        if pred:
            out["prediction"].append(pred)
        if bar["interval"] != "1m":
            continue
        derived = chain.feed("bar", bar) + (chain.feed("pred", pred) if pred else [])
        for ev in derived:
            kind = {"sig": "signal", "ord": "order", "rej": "order_rejected", "fill": "fill",
                    "pos": "position", "eq": "equity"}[ev["event_id"].split(":", 1)[0]]
            out[kind].append(ev)
    return out


@pytest.fixture(scope="module")
def filled_db(services, tmp_path_factory):
    """(DATABASE_URL, from, to): a migrated database holding a 5-hour simulated run,
    written by the PostgreSQL sink's writer."""
    from sinks import schema
    from sinks.postgres import PostgresWriter
    from sinks.runner import Item

    minute = 60_000_000
    end_us = datetime.now(timezone.utc).timestamp() * 1e6 // minute * minute
    start_us = int(end_us - SIM_HOURS * 3600 * 1_000_000)
    events = simulated_run(start_us, int(end_us))
    with new_database(services["DATABASE_URL"]) as url:
        s = module_settings(services, tmp_path_factory.mktemp("dash"), url)
        schema.migrate(s)
        writer = PostgresWriter(s)
        try:
            for kind, records in events.items():
                for i in range(0, len(records), 5000):
                    assert writer.write([Item(None, kind, r) for r in records[i:i + 5000]]) == []
        finally:
            writer.close()
        with psycopg.connect(url) as conn:
            for table in ("ticks", "bars", "indicators", "predictions", "signals", "orders",
                          "order_rejections", "fills", "positions", "equity"):
                n = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                assert n > 0, f"the simulated run left {table} empty"
        yield url, start_us, int(end_us)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand_sql(query: str, frm: int, to: int, variables: dict[str, str], timescaledb: bool = False) -> str:
    """Grafana's PostgreSQL macros and dashboard variables, expanded as Grafana does
    ($__timeGroupAlias: time_bucket when the datasource has TimescaleDB enabled, else
    plain arithmetic on the epoch)."""
    frm_s, to_s = f"'{_iso(frm)}'", f"'{_iso(to)}'"

    def group_alias(m):
        col, interval = (x.strip() for x in m.group(1).split(","))
        secs = interval_seconds(interval.strip("'"))
        bucket = (f"time_bucket('{secs}s', {col})" if timescaledb
                  else f"to_timestamp(floor(extract(epoch from {col}) / {secs}) * {secs})")
        return f'{bucket} AS "time"'

    query = re.sub(r"\$__timeFilter\(([^)]*)\)", lambda m: f"{m.group(1).strip()} BETWEEN {frm_s} AND {to_s}", query)
    query = re.sub(r"\$__timeGroupAlias\(([^)]*)\)", group_alias, query)
    query = query.replace("$__timeFrom()", frm_s).replace("$__timeTo()", to_s)
    query = re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], query)  # KeyError: unknown macro/variable
    return query


def _flavors(conn) -> list[bool]:
    has = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return [False, True] if has else [False]


def _variable_values(conn, frm, to) -> dict[str, str]:
    """Each dashboard variable's first value (Grafana's default), from its own query."""
    values = {}
    for name in DASHBOARDS:
        for v in _variables(name):
            rows = conn.execute(expand_sql(v["query"], frm, to, values)).fetchall()
            assert rows, f"variable {v['name']} of {name} has no values"
            values.setdefault(v["name"], rows[0][0])
    return values


def test_variable_queries_return_the_simulated_symbols_intervals_and_account(filled_db):
    url, frm, to = filled_db
    with psycopg.connect(url) as conn:
        for name in DASHBOARDS:
            for v in _variables(name):
                rows = [r[0] for r in conn.execute(expand_sql(v["query"], frm, to, {})).fetchall()]
                assert rows == {"symbol": sorted(SIM_SYMBOLS), "interval": BAR_INTERVALS,
                                "account": ["paper"]}[v["name"]]


@pytest.mark.parametrize("where,target", list(_targets("grafana-postgresql-datasource")),
                         ids=[w for w, _ in _targets("grafana-postgresql-datasource")])
def test_sql_panel_query_runs_and_returns_rows(filled_db, where, target):
    url, frm, to = filled_db
    with psycopg.connect(url) as conn:
        variables = _variable_values(conn, frm, to)
        for timescaledb in _flavors(conn):
            cur = conn.execute(expand_sql(target["rawSql"], frm, to, variables, timescaledb))
            rows = cur.fetchall()
            assert rows, f"{where}: no rows"
            numbers = [x for row in rows for x in row if isinstance(x, (int, float, Decimal)) and not isinstance(x, bool)]
            assert any(numbers), f"{where}: no non-zero number in {rows[:3]}"
            if target["format"] == "time_series":
                assert cur.description[0].name == "time", f"{where}: first column must be time"


def test_expansion_rejects_unknown_variables_and_matches_grafana_forms():
    q = "SELECT $__timeGroupAlias(ts, '5m'), x FROM t WHERE $__timeFilter(ts) AND s = '$symbol'"
    plain = expand_sql(q, 0, 60_000_000, {"symbol": "AAPL"})
    assert plain == ("SELECT to_timestamp(floor(extract(epoch from ts) / 300) * 300) AS \"time\", x FROM t "
                     "WHERE ts BETWEEN '1970-01-01T00:00:00Z' AND '1970-01-01T00:01:00Z' AND s = 'AAPL'")
    assert "time_bucket('300s', ts) AS \"time\"" in expand_sql(q, 0, 1, {"symbol": "A"}, timescaledb=True)
    with pytest.raises(KeyError):
        expand_sql(q, 0, 1, {})


# -- PromQL ----------------------------------------------------------------------------------
def _promql() -> list[str]:
    return [t["expr"] for _, t in _targets("prometheus")] + [r["expr"] for r in _rules()]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_every_promql_expression_parses(tmp_path):
    exprs = _promql()
    rules = {"groups": [{"name": "parse", "rules": [{"record": f"parse:expr_{i}", "expr": e}
                                                    for i, e in enumerate(exprs)]}]}
    (tmp_path / "parse.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run([PROMTOOL, "check", "rules", "parse.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


def test_promql_names_only_declared_metrics():
    used = {n for e in _promql() for n in _metric_names(e)}
    assert used - {"up"} <= _project_metrics(), sorted(used - {"up"} - _project_metrics())


# Exported once the stages that own them run in the worker (predict, strategy, risk,
# execution, portfolio are being built); the live test fails when one of them shows up,
# so the list shrinks as stages land.
PENDING_STAGES = {
    "ticktape_predictions_total", "ticktape_model_active",
    "ticktape_orders_total", "ticktape_fills_total", "ticktape_risk_rejections_total", "ticktape_equity",
    "ticktape_pnl", "ticktape_gross_exposure", "ticktape_positions_open", "ticktape_kill_switch",
    "ticktape_risk_pending", "ticktape_risk_idle_symbols", "ticktape_risk_late_events_total",
}
# Labelled by the failure itself: absent until a first error (declared, checked above).
ON_ERROR = {"ticktape_processing_errors_total", "ticktape_sink_errors_total"}
# Per TimescaleDB job: no series on plain PostgreSQL (tests/test_job_health.py).
TIMESCALEDB_ONLY = {"ticktape_timescaledb_job_failed", "ticktape_timescaledb_job_failures"}


@pytest.fixture(scope="module")
def live(services, tmp_path_factory):
    """The main job's four processes after bars, sink rows and Redis writes flowed."""
    with new_database(services["DATABASE_URL"]) as url:
        home = tmp_path_factory.mktemp("live")
        s = module_settings(services, home, url)
        pipe = Pipeline(s, ["worker", "sink-postgres", "sink-redis", "producer"], home)
        try:
            pipe.wait("worker", "ticktape_bars_closed_total", 20, interval="1s")
            pipe.wait("sink-postgres", "ticktape_sink_rows_total", 1, table="bars")
            pipe.wait("sink-redis", "ticktape_sink_batches_total", 1)
            yield {role: pipe.scrape(role) for role in pipe.procs}
        finally:
            pipe.stop()


def test_promql_names_are_exported_by_the_running_processes(live):
    exported = {name for samples in live.values() for name in samples}
    assert {n for n in exported if n.startswith("ticktape_")} <= _project_metrics()
    used = {n for e in _promql() for n in _metric_names(e)} - {"up"}
    optional = PENDING_STAGES | ON_ERROR | TIMESCALEDB_ONLY
    assert used - optional <= exported, sorted(used - optional - exported)
    assert not PENDING_STAGES & exported, f"now exported, drop from PENDING_STAGES: {PENDING_STAGES & exported}"
    assert optional <= used  # no stale entries

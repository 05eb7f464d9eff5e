"""Writes grafana/dashboards/*.json: the four dashboards, built from one description.

    python grafana/build_dashboards.py     # after editing; tests/test_dashboards.py
                                           # fails while the JSON is out of date

Panels are laid out left to right on Grafana's 24-column grid; ids are assigned in
order, so the output is deterministic (byte-identical for the same source).
SQL runs on plain PostgreSQL and TimescaleDB alike: tables and views of
sinks/migrations, Grafana macros only ($__timeFilter, $__timeGroupAlias, $__timeTo).
Defaults show data after `make run`: the interval variables list intervals by duration,
shortest (the 1 s bars the main job trades and predicts on) first and selected.
"""

from __future__ import annotations

import json
from pathlib import Path

from ticktape.core.risk import REASON_CODES

OUT = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39  # Grafana 10.4 / 11
PROM = {"type": "prometheus", "uid": "prometheus"}
SQL = {"type": "grafana-postgresql-datasource", "uid": "timescaledb"}


# -- building blocks ---------------------------------------------------------------------
def prom(expr: str, legend: str = "", instant: bool = False) -> dict:
    return {
        "datasource": PROM,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "editorMode": "code",
    }


def sql(query: str, fmt: str = "time_series") -> dict:
    return {"datasource": SQL, "rawSql": " ".join(query.split()), "format": fmt, "rawQuery": True, "editorMode": "code"}


def panel(
    title: str,
    kind: str,
    targets: list[dict],
    *,
    w: int = 12,
    h: int = 8,
    unit: str = "",
    description: str = "",
    defaults: dict | None = None,
    options: dict | None = None,
    overrides: list | None = None,
) -> dict:
    ds = targets[0]["datasource"]
    field_defaults = {"unit": unit} if unit else {}
    field_defaults.update(defaults or {})
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": ds,
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": field_defaults, "overrides": overrides or []},
        "options": options or {},
        "_size": (w, h),
    }


def zero_one(zero: str, zero_color: str, one: str, one_color: str) -> dict:
    """Field defaults that show a 0/1 series as words in colours."""
    options = {"0": {"text": zero, "color": zero_color}, "1": {"text": one, "color": one_color}}
    return {"mappings": [{"type": "value", "options": options}]}


def by_name(names: list[str], properties: list[dict]) -> list[dict]:
    """Field overrides: the same properties for each field name."""
    return [{"matcher": {"id": "byName", "options": n}, "properties": properties} for n in names]


def thresholds(*steps) -> dict:
    """steps: (color, from) pairs; the first one starts at -inf."""
    return {
        "mode": "absolute",
        "steps": [{"color": c, "value": None if i == 0 else v} for i, (c, v) in enumerate(steps)],
    }


def sql_variable(
    name: str, label: str, query: str, *, sort: int = 1, multi: bool = False, current: str | None = None
) -> dict:
    """sort: Grafana's variable sort (1 alphabetical, 0 the query's own order)."""
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": SQL,
        "query": " ".join(query.split()),
        "definition": " ".join(query.split()),
        "refresh": 2,
        "sort": sort,
        "multi": multi,
        "includeAll": False,
        "current": {"text": current, "value": current} if current else {},
        "options": [],
    }


# Grafana selects a variable's first value: the symbols that were bought and sold come
# first, the most filled first, so the default shows trades as soon as there are any.
TRADED_FIRST = """
    SELECT b.symbol FROM (SELECT DISTINCT symbol FROM bars WHERE $__timeFilter(window_start)) b
    LEFT JOIN fills f ON f.symbol = b.symbol AND $__timeFilter(f.ts)
    GROUP BY b.symbol ORDER BY count(DISTINCT f.side) DESC, count(f.ts) DESC, b.symbol"""
SYMBOL_VAR = sql_variable("symbol", "Symbol", TRADED_FIRST, sort=0)
SYMBOLS_VAR = sql_variable("symbol", "Symbols", TRADED_FIRST, sort=0, multi=True)  # queries use `symbol IN ($symbol)`


def interval_variable(table: str, time_col: str) -> dict:
    """The intervals stored in ``table``, by duration ('1s' < '1m' < '5m' < '1h'), '1s' selected."""
    return sql_variable(
        "interval",
        "Interval",
        f"""
        SELECT interval FROM (SELECT DISTINCT interval FROM {table} WHERE $__timeFilter({time_col})) i
        ORDER BY interval::interval, interval""",
        sort=0,
        current="1s",
    )


INTERVAL_VAR = interval_variable("bars", "window_start")
ACCOUNT_VAR = sql_variable(
    "account", "Account", "SELECT DISTINCT account FROM equity WHERE $__timeFilter(ts) ORDER BY 1"
)


def annotation(name: str, color: str, query: str) -> dict:
    """An SQL annotation (columns time, text, tags) shown on every time-series panel."""
    return {
        "name": name,
        "datasource": SQL,
        "enable": True,
        "hide": False,
        "iconColor": color,
        "target": {
            "rawSql": " ".join(query.split()),
            "format": "table",
            "rawQuery": True,
            "editorMode": "code",
            "refId": "Anno",
        },
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[dict],
    variables: list[dict],
    refresh: str = "10s",
    time_from: str = "now-1h",
    annotations: list[dict] | None = None,
) -> dict:
    x = y = row_h = 0
    laid = []
    for pid, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        laid.append({"id": pid, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **p})
        x, row_h = x + w, max(row_h, h)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["ticktape"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "timezone": "utc",
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "annotations": {"list": annotations or []},
        "links": [],
        "templating": {"list": variables},
        "panels": laid,
    }


# -- Market (TimescaleDB) ----------------------------------------------------------------
IND = "FROM indicators WHERE symbol IN ($symbol) AND interval = '$interval' AND $__timeFilter(ts)"


def market() -> dict:
    top5 = """
        SELECT $__timeGroupAlias(window_start, '1m'), symbol AS metric, avg(close) AS close FROM bars
        WHERE interval = '$interval' AND $__timeFilter(window_start) AND symbol IN (
          SELECT symbol FROM bars WHERE interval = '$interval' AND $__timeFilter(window_start)
          GROUP BY symbol ORDER BY sum(volume * vwap) DESC, symbol LIMIT 5)
        GROUP BY 1, 2 ORDER BY 1"""
    prices = """
        SELECT symbol, max(window_end) AS "time", (array_agg(close ORDER BY window_start DESC))[1] AS price,
               100 * ((array_agg(close ORDER BY window_start DESC))[1]
                      / (array_agg(open ORDER BY window_start))[1] - 1) AS "change %",
               sum(volume * vwap) / NULLIF(sum(volume), 0) AS vwap, sum(volume) AS volume,
               sum(trade_count) AS trades
        FROM bars WHERE interval = '$interval' AND $__timeFilter(window_start)
        GROUP BY symbol ORDER BY symbol"""
    candles = """
        SELECT b.window_start AS "time", b.open, b.high, b.low, b.close, b.volume,
               i.bb_upper AS "BB upper", i.bb_middle AS "BB middle", i.bb_lower AS "BB lower",
               i.vwap AS "VWAP"
        FROM bars b LEFT JOIN indicators i
          ON i.symbol = b.symbol AND i.interval = b.interval AND i.ts = b.window_end
        WHERE b.symbol IN ($symbol) AND b.interval = '$interval' AND $__timeFilter(b.window_start)
        ORDER BY 1"""
    band = {"fill": "dash", "dash": [6, 4]}  # Bollinger bands dashed, under the candles
    vol_rank = """
        SELECT symbol, volatility_20 AS volatility FROM (
          SELECT DISTINCT ON (symbol) symbol, volatility_20 FROM indicators
          WHERE interval = '$interval' AND $__timeFilter(ts) AND volatility_20 IS NOT NULL
          ORDER BY symbol, ts DESC) v
        ORDER BY volatility DESC LIMIT 20"""
    market_avg = """
        SELECT $__timeGroupAlias(ts, '1m'), avg({col}) AS "{name}" FROM indicators
        WHERE interval = '$interval' AND $__timeFilter(ts) GROUP BY 1 ORDER BY 1"""
    zones = {"thresholdsStyle": {"mode": "line+area"}}
    panels = [
        panel(
            "Top 5 symbols by traded value: close",
            "timeseries",
            [sql(top5)],
            w=16,
            unit="currencyUSD",
            description="The five symbols with the largest traded value (volume x VWAP) in the range.",
        ),
        panel(
            "Active symbols (last 5 min)",
            "stat",
            [
                sql(
                    """
            SELECT count(DISTINCT symbol) AS "active symbols" FROM bars
            WHERE interval = '$interval' AND window_start >= $__timeTo()::timestamptz - interval '5 minutes'
              AND $__timeFilter(window_start)""",
                    "table",
                )
            ],
            w=4,
            h=4,
        ),
        panel(
            "Data points in the last minute",
            "stat",
            [
                sql(
                    """
            SELECT count(*) AS ticks FROM ticks
            WHERE ts > $__timeTo()::timestamptz - interval '1 minute' AND $__timeFilter(ts)""",
                    "table",
                )
            ],
            w=4,
            h=4,
            description="Ticks stored with an event time in the last minute of the range.",
        ),
        panel(
            "Market average volatility 20",
            "stat",
            [sql(market_avg.format(col="volatility_20", name="avg volatility"))],
            w=4,
            h=4,
            unit="percentunit",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        panel(
            "Market average RSI 14",
            "stat",
            [sql(market_avg.format(col="rsi_14", name="avg RSI 14"))],
            w=4,
            h=4,
            options={"reduceOptions": {"calcs": ["lastNotNull"]}},
            defaults={"thresholds": thresholds(("blue", None), ("green", 30), ("red", 70))},
        ),
        panel(
            "Latest prices (change % over the range)",
            "table",
            [sql(prices, "table")],
            w=12,
            h=10,
            overrides=by_name(
                ["change %"],
                [
                    {"id": "unit", "value": "percent"},
                    {"id": "decimals", "value": 2},
                    {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                    {"id": "thresholds", "value": thresholds(("red", None), ("green", 0))},
                ],
            ),
        ),
        panel(
            "Volatility ranking (volatility 20, annualized)",
            "bargauge",
            [sql(vol_rank, "table")],
            w=12,
            h=10,
            unit="percentunit",
            options={"orientation": "horizontal", "reduceOptions": {"values": True, "calcs": []}},
        ),
        dict(
            panel(
                "$symbol: candlesticks, volume, Bollinger bands 20/2, VWAP",
                "candlestick",
                [sql(candles)],
                w=24,
                h=12,
                unit="currencyUSD",
                description="One chart per selected symbol; buy and sell fills are annotations.",
                options={
                    "mode": "candles+volume",
                    "candleStyle": "candles",
                    "colorStrategy": "open-close",
                    "fields": {"open": "open", "high": "high", "low": "low", "close": "close", "volume": "volume"},
                    "includeAllFields": True,
                    "legend": {"displayMode": "list", "placement": "bottom"},
                },
                overrides=by_name(["BB upper", "BB lower"], [{"id": "custom.lineStyle", "value": band}]),
            ),
            repeat="symbol",
            repeatDirection="v",
        ),
        panel(
            "$symbol: price and SMA 10/20/50/200",
            "timeseries",
            [
                sql(
                    f'SELECT ts AS "time", symbol AS metric, close, sma_10 AS "SMA 10", sma_20 AS "SMA 20", '
                    f'sma_50 AS "SMA 50", sma_200 AS "SMA 200" {IND} ORDER BY 1'
                )
            ],
            w=24,
            unit="currencyUSD",
        ),
        panel(
            "$symbol: RSI 14",
            "timeseries",
            [sql(f'SELECT ts AS "time", symbol AS metric, rsi_14 AS "RSI 14" {IND} ORDER BY 1')],
            defaults={
                "min": 0,
                "max": 100,
                "custom": zones,
                "thresholds": thresholds(("green", None), ("transparent", 30), ("red", 70)),
            },
            description="Overbought above 70, oversold below 30.",
        ),
        panel(
            "$symbol: MACD 12/26/9",
            "timeseries",
            [
                sql(
                    f'SELECT ts AS "time", symbol AS metric, macd AS "MACD", macd_signal AS "signal", '
                    f'macd_hist AS "histogram" {IND} ORDER BY 1'
                )
            ],
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".*histogram"},
                    "properties": [
                        {"id": "custom.drawStyle", "value": "bars"},
                        {"id": "custom.fillOpacity", "value": 60},
                    ],
                }
            ],
        ),
        panel(
            "$symbol: volume per bar",
            "timeseries",
            [
                sql("""
            SELECT window_start AS "time", symbol AS metric, volume FROM bars
            WHERE symbol IN ($symbol) AND interval = '$interval' AND $__timeFilter(window_start)
            ORDER BY 1""")
            ],
            w=24,
            h=6,
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 80}},
        ),
    ]
    fills = """
        SELECT ts AS "time", format('%s %s %s @ %s (%s)', side, quantity, symbol, round(price::numeric, 2),
                                    account) AS text, symbol || ',' || lower(side) AS tags
        FROM fills WHERE side = '{side}' AND symbol IN ($symbol) AND $__timeFilter(ts) ORDER BY 1"""
    return dashboard(
        "ticktape-market",
        "ticktape / Market",
        "Prices, indicators and activity from TimescaleDB (bars and indicators tables).",
        panels,
        [SYMBOLS_VAR, INTERVAL_VAR],
        time_from="now-3h",
        annotations=[
            annotation("Buy fills", "green", fills.format(side="BUY")),
            annotation("Sell fills", "red", fills.format(side="SELL")),
        ],
    )


# -- Pipeline health (Prometheus) ----------------------------------------------------------
RATE = "[1m]"


def pipeline() -> dict:
    quantiles = [
        prom(
            f"histogram_quantile({q}, sum by (le, stage) (rate(ticktape_event_latency_seconds_bucket{RATE})))",
            f"{{{{stage}}}} p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]
    panels = [
        panel(
            "Processes up",
            "stat",
            [prom("up", "{{job}}", instant=True)],
            w=12,
            h=4,
            defaults=zero_one("DOWN", "red", "UP", "green"),
        ),
        panel(
            "Sinks healthy",
            "stat",
            [prom("ticktape_sink_healthy", "{{sink}}", instant=True)],
            w=12,
            h=4,
            defaults=zero_one("FAILING", "red", "OK", "green"),
        ),
        panel(
            "Events out per stage and topic",
            "timeseries",
            [prom(f"sum by (stage, topic) (rate(ticktape_events_out_total{RATE}))", "{{stage}} → {{topic}}")],
            unit="ops",
        ),
        panel(
            "Events in per stage and topic",
            "timeseries",
            [prom(f"sum by (stage, topic) (rate(ticktape_events_in_total{RATE}))", "{{topic}} → {{stage}}")],
            unit="ops",
        ),
        panel(
            "Event time → processed latency",
            "timeseries",
            quantiles,
            unit="s",
            description="Per stage; a bar's event time is its window end plus the grace period.",
        ),
        panel(
            "Consumer lag per group",
            "timeseries",
            [prom("sum by (group) (ticktape_consumer_lag)", "{{group}}")],
            unit="short",
            description="Messages not yet committed, summed over a group's topics and partitions.",
        ),
        panel(
            "End-to-end latency: event time → stored",
            "timeseries",
            [
                prom(
                    f"histogram_quantile({q}, sum by (le, stage) (rate(ticktape_event_latency_seconds_bucket"
                    f'{{stage=~"sink-.*"}}{RATE})))',
                    f"{{{{stage}}}} p{int(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            unit="s",
            description="From an event's time to its write by the PostgreSQL and Redis sinks.",
        ),
        panel(
            "Redis, PostgreSQL and broker health",
            "stat",
            [
                prom("max by (sink) (ticktape_sink_healthy)", "{{sink}} writes", instant=True),
                prom(f"sum(rate(ticktape_events_in_total{RATE})) > bool 0", "broker: events consumed", instant=True),
            ],
            defaults=zero_one("FAILING", "red", "OK", "green"),
            description="A sink's last write to its store, and whether any stage consumes from the broker.",
        ),
        panel(
            "Bars closed and late ticks",
            "timeseries",
            [
                prom(f"sum by (interval) (rate(ticktape_bars_closed_total{RATE}))", "bars {{interval}}"),
                prom(f"sum by (interval) (rate(ticktape_late_ticks_total{RATE}))", "late ticks {{interval}}"),
            ],
            unit="ops",
        ),
        panel(
            "Errors, sink errors and dead letters",
            "timeseries",
            [
                prom("sum by (stage) (increase(ticktape_processing_errors_total[5m]))", "errors {{stage}}"),
                prom("sum by (sink) (increase(ticktape_sink_errors_total[5m]))", "write failures {{sink}}"),
                prom("sum by (stage, topic) (increase(ticktape_dlq_messages_total[5m]))", "DLQ {{topic}}"),
            ],
            unit="short",
            description="Counts over the last 5 minutes.",
        ),
        panel(
            "TimescaleDB jobs failing",
            "stat",
            [prom("sum(ticktape_timescaledb_job_failed) or vector(0)", "failing", instant=True)],
            w=6,
            defaults={"thresholds": thresholds(("green", None), ("red", 1))},
            description="Background jobs (compression, retention, aggregate refresh) whose last run "
            "failed; always 0 on plain PostgreSQL. Details: timescaledb_information.job_errors.",
        ),
        panel(
            "TimescaleDB job failures",
            "timeseries",
            [
                prom(
                    "sum by (job_id, proc, hypertable) (ticktape_timescaledb_job_failures)",
                    "{{proc}} {{hypertable}} (job {{job_id}})",
                )
            ],
            w=18,
            unit="short",
            description="Failed runs per job since it was created (the sink reads them every 30 s).",
        ),
        panel(
            "Sink rows written per table",
            "timeseries",
            [prom(f"sum by (sink, table) (rate(ticktape_sink_rows_total{RATE}))", "{{sink}} {{table}}")],
            unit="rowsps",
        ),
        panel(
            "Sink batches and batch latency",
            "timeseries",
            [
                prom(f"sum by (sink) (rate(ticktape_sink_batches_total{RATE}))", "batches/s {{sink}}"),
                prom(
                    f"histogram_quantile(0.95, sum by (le, sink) (rate(ticktape_sink_batch_seconds_bucket{RATE})))",
                    "p95 s {{sink}}",
                ),
            ],
            unit="short",
        ),
    ]
    return dashboard(
        "ticktape-pipeline",
        "ticktape / Pipeline health",
        "Throughput, latency, lag, errors and sinks, from the processes' /metrics.",
        panels,
        [],
        time_from="now-30m",
    )


# -- Trading & risk ----------------------------------------------------------------------
ACCT = "account = '$account' AND $__timeFilter(ts)"


def trading() -> dict:
    positions = f"""
        SELECT symbol, quantity, avg_cost, last_price, market_value, realized_pnl, unrealized_pnl
        FROM (SELECT DISTINCT ON (symbol) * FROM positions WHERE {ACCT} ORDER BY symbol, ts DESC) p
        ORDER BY quantity = 0, abs(market_value) DESC, symbol"""
    panels = [
        panel(
            "Kill switch",
            "stat",
            [prom("max by (account) (ticktape_kill_switch)", "{{account}}", instant=True)],
            w=6,
            h=5,
            defaults=zero_one("ACTIVE", "green", "HALTED", "red"),
        ),
        panel(
            "Equity",
            "stat",
            [prom("sum by (account) (ticktape_equity)", "{{account}}", instant=True)],
            w=6,
            h=5,
            unit="currencyUSD",
        ),
        panel(
            "PnL",
            "stat",
            [prom("sum by (account, kind) (ticktape_pnl)", "{{kind}}", instant=True)],
            w=6,
            h=5,
            unit="currencyUSD",
        ),
        panel(
            "Gross exposure and open positions",
            "stat",
            [
                prom("sum by (account) (ticktape_gross_exposure)", "exposure", instant=True),
                prom("sum by (account) (ticktape_positions_open)", "positions", instant=True),
            ],
            w=6,
            h=5,
        ),
        panel(
            "Orders and fills per minute",
            "timeseries",
            [
                prom("sum by (side) (rate(ticktape_orders_total[5m])) * 60", "orders {{side}}"),
                prom("sum by (side) (rate(ticktape_fills_total[5m])) * 60", "fills {{side}}"),
            ],
            unit="short",
        ),
        panel(
            "Risk rejections by reason (per minute)",
            "timeseries",
            [prom("sum by (reason) (rate(ticktape_risk_rejections_total[5m])) * 60", "{{reason}}")],
            unit="short",
        ),
        panel(
            "Ordering rule: events waiting, idle symbols, late input",
            "timeseries",
            [
                prom("sum by (account) (ticktape_risk_pending)", "waiting {{account}}"),
                prom("sum by (account) (ticktape_risk_idle_symbols)", "idle symbols {{account}}"),
                prom("sum by (account, kind) (increase(ticktape_risk_late_events_total[5m]))", "late {{kind}} (5m)"),
            ],
            w=24,
            unit="short",
        ),
        panel(
            "Equity curve",
            "timeseries",
            [
                sql(f"""
            SELECT $__timeGroupAlias(ts, '1m'), avg(equity) AS equity FROM equity WHERE {ACCT}
            GROUP BY 1 ORDER BY 1""")
            ],
            w=12,
            unit="currencyUSD",
        ),
        panel(
            "PnL (realized, unrealized) and gross exposure",
            "timeseries",
            [
                sql(f"""
            SELECT ts AS "time", realized_pnl AS realized, unrealized_pnl AS unrealized,
                   gross_exposure AS "gross exposure"
            FROM equity WHERE {ACCT} ORDER BY 1""")
            ],
            w=12,
            unit="currencyUSD",
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "gross exposure"},
                    "properties": [{"id": "custom.axisPlacement", "value": "right"}],
                }
            ],
        ),
        panel(
            "Drawdown from the range's peak equity",
            "timeseries",
            [
                sql(f"""
            SELECT ts AS "time", 100 * (equity / max(equity) OVER (ORDER BY ts) - 1) AS "drawdown %"
            FROM equity WHERE {ACCT} ORDER BY 1""")
            ],
            w=24,
            h=6,
            unit="percent",
            defaults={"max": 0},
        ),
        panel(
            "Rejections by reason",
            "bargauge",
            [
                sql(
                    f"""
            SELECT r.reason, count(o.event_id) AS rejections
            FROM unnest(ARRAY[{", ".join(f"'{c}'" for c in REASON_CODES)}]) AS r(reason)
            LEFT JOIN order_rejections o ON o.reason_code = r.reason AND o.{ACCT.replace("(ts)", "(o.ts)")}
            GROUP BY 1 ORDER BY 2 DESC, 1""",
                    "table",
                )
            ],
            w=8,
            description="Every reason the risk engine can give, 0 included.",
            options={"orientation": "horizontal", "reduceOptions": {"values": True, "calcs": []}},
        ),
        panel(
            "Positions: open first, then closed ones with their realized PnL",
            "table",
            [sql(positions, "table")],
            w=16,
            description="The latest position of every symbol traded in the range.",
        ),
        panel(
            "Orders",
            "table",
            [
                sql(
                    f"""
            SELECT ts AS "time", symbol, side, quantity, order_type, reference_price FROM orders
            WHERE {ACCT} ORDER BY ts DESC LIMIT 100""",
                    "table",
                )
            ],
            w=8,
            h=10,
        ),
        panel(
            "Fills",
            "table",
            [
                sql(
                    f"""
            SELECT ts AS "time", symbol, side, quantity, price, commission, slippage_bps FROM fills
            WHERE {ACCT} ORDER BY ts DESC LIMIT 100""",
                    "table",
                )
            ],
            w=8,
            h=10,
        ),
        panel(
            "Rejections",
            "table",
            [
                sql(
                    f"""
            SELECT ts AS "time", symbol, side, quantity, reason_code, detail FROM order_rejections
            WHERE {ACCT} ORDER BY ts DESC LIMIT 100""",
                    "table",
                )
            ],
            w=8,
            h=10,
        ),
    ]
    return dashboard(
        "ticktape-trading",
        "ticktape / Trading & risk",
        "Orders, rejections, fills, positions, exposure, equity and the kill switch.",
        panels,
        [ACCOUNT_VAR],
        time_from="now-6h",
    )


# -- Model ---------------------------------------------------------------------------------
def model() -> dict:
    hit_rate = """
        SELECT $__timeGroupAlias(p.ts, '5m'),
               avg(CASE WHEN (p.p_up >= 0.5) = (bn.close > b0.close) THEN 1.0 ELSE 0.0 END) AS "hit rate"
        FROM predictions p
        JOIN bars b0 ON b0.symbol = p.symbol AND b0.interval = p.interval AND b0.window_end = p.ts
        JOIN bars bn ON bn.symbol = p.symbol AND bn.interval = p.interval
             AND bn.window_start = b0.window_start + p.horizon * (b0.window_end - b0.window_start)
        WHERE p.interval = '$interval' AND $__timeFilter(p.ts) AND bn.close <> b0.close
        GROUP BY 1 ORDER BY 1"""
    p_up_hist = """
        SELECT to_char((b - 1) / 10.0, 'FM0.0') || '–' || to_char(b / 10.0, 'FM0.0') AS p_up,
               count(*) AS predictions
        FROM (SELECT least(width_bucket(p_up, 0, 1, 10), 10) AS b FROM predictions
              WHERE interval = '$interval' AND $__timeFilter(ts)) x
        GROUP BY b ORDER BY b"""
    panels = [
        panel(
            "Active model",
            "table",
            [prom("ticktape_model_active == 1", "{{model}} {{version}}", instant=True)],
            w=8,
            h=5,
        ),
        panel(
            "Versions in use (predictions stored)",
            "table",
            [
                sql(
                    """
            SELECT model_name AS model, model_version AS version, count(*) AS predictions,
                   max(ts) AS "last prediction"
            FROM predictions WHERE $__timeFilter(ts) GROUP BY 1, 2 ORDER BY 4 DESC""",
                    "table",
                )
            ],
            w=16,
            h=5,
        ),
        panel(
            "Predictions per second",
            "timeseries",
            [prom("sum by (model) (rate(ticktape_predictions_total[1m]))", "{{model}}")],
            unit="ops",
        ),
        panel(
            "Inference latency",
            "timeseries",
            [
                prom(
                    f"histogram_quantile({q}, sum by (le) (rate(ticktape_inference_latency_seconds_bucket[1m])))",
                    f"p{int(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            unit="s",
            description="Scoring time of the batch each prediction was in.",
        ),
        panel("p_up distribution", "barchart", [sql(p_up_hist, "table")], options={"xField": "p_up"}),
        panel(
            "Hit rate of past predictions (direction over the horizon)",
            "timeseries",
            [sql(hit_rate)],
            unit="percentunit",
            defaults={"min": 0, "max": 1},
            description="Share of predictions whose side (p_up >= 0.5) matched the sign of the close "
            "change over the prediction's horizon; flat outcomes are left out.",
        ),
        panel(
            "$symbol: p_up",
            "timeseries",
            [
                sql("""
            SELECT ts AS "time", p_up FROM predictions
            WHERE symbol = '$symbol' AND interval = '$interval' AND $__timeFilter(ts) ORDER BY 1""")
            ],
            w=24,
            defaults={"min": 0, "max": 1},
        ),
    ]
    return dashboard(
        "ticktape-model",
        "ticktape / Model",
        "The active model, its throughput and latency, and how its predictions fared.",
        panels,
        [SYMBOL_VAR, interval_variable("predictions", "ts")],
        time_from="now-6h",
    )


DASHBOARDS = {"market": market, "pipeline": pipeline, "trading": trading, "model": model}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name in DASHBOARDS:
        (OUT / f"{name}.json").write_text(render(name))
        print(f"wrote {OUT / name}.json")


if __name__ == "__main__":
    main()

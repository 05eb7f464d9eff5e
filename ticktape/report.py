"""The backtest report: one interactive, self-contained HTML file (Plotly, its JavaScript
inlined: no CDN, it opens offline).

One chart on a shared time axis: the strategy interval's candles of a symbol (a menu
picks the symbol) with its fills as entry and exit markers and the price indicators of
its indicator sets as overlays (Bollinger bands and EMA 12/26 shown, SMA 10/20/50/200
and VWAP a legend click away), then the equity (gross exposure a click away), the
drawdown and each traded symbol's position.  Then the figures, in the command's units
(``core.performance.display``: annualized ones n/a on a short run, with the reason),
the run, rejections and trades.

Times: a candle and its indicators sit at the bar's window start; a fill at its time,
except where fills take the next bar's open (bars mode), at that bar's window start.

Bounds, each said in the report when reached: at most ``MAX_POINTS`` candles per
symbol and points per line (beyond, consecutive bars merge into one candle: the first
open, highest high, lowest low, last close; lines keep each group's last value, the
drawdown its deepest), ``MAX_MARKERS`` fill markers per symbol (the first ones),
``MAX_SYMBOLS`` symbols in the menu and ``MAX_SYMBOL_LINES`` position lines (the most
traded first), ``MAX_ROWS`` rows per table.  Same input, same bytes.  Written
atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from .core.performance import ANNUALIZED, annualized_note, display, fill_outcomes

MAX_POINTS = 5000  # candles per symbol, points per line
MAX_MARKERS = 5000  # fill markers per symbol
MAX_SYMBOLS = 30  # symbols in the menu
MAX_SYMBOL_LINES = 8  # symbols drawn in the positions panel
MAX_ROWS = 200  # rows of the trades and rejections tables

UP, DOWN = "#26a69a", "#ef5350"  # candle bodies
BUY, SELL = "#1e63d6", "#f08c00"  # fill markers
# price overlays of an indicator set: (field, label, colour, dash, shown at first)
OVERLAYS = (
    ("bb_upper", "BB upper", "#7e57c2", "dash", True),
    ("bb_middle", "BB middle", "#7e57c2", "dot", True),
    ("bb_lower", "BB lower", "#7e57c2", "dash", True),
    ("ema_12", "EMA 12", "#e6a700", "solid", True),
    ("ema_26", "EMA 26", "#6d4c41", "solid", True),
    ("sma_10", "SMA 10", "#00838f", "solid", False),
    ("sma_20", "SMA 20", "#2e7d32", "solid", False),
    ("sma_50", "SMA 50", "#3949ab", "solid", False),
    ("sma_200", "SMA 200", "#ad1457", "solid", False),
    ("vwap", "VWAP", "#546e7a", "dot", False),
)
FIGURES = (
    ("total_return", "total return"),
    ("cagr", "CAGR"),
    ("sharpe", "Sharpe"),
    ("sortino", "Sortino"),
    ("max_drawdown", "max drawdown"),
    ("win_rate", "win rate"),
    ("closing_trades", "closing trades"),
    ("turnover", "turnover"),
    ("traded_notional", "traded notional"),
    ("start_equity", "start equity"),
    ("end_equity", "end equity"),
    ("span_us", "period"),
)
CARDS = ("total_return", "cagr", "sharpe", "max_drawdown", "win_rate")
CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": True}


def _time(us: int) -> str:
    """A time as Plotly reads it, in UTC."""
    dt = datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc).replace(microsecond=us % 1_000_000)
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f") if us % 1_000_000 else dt.strftime("%Y-%m-%d %H:%M:%S")


def _step_line(fig, points: list[tuple[int, float]], row: int, line: dict, **trace) -> None:
    """(ts, value) points as a line held until the next point, in panel ``row``."""
    import plotly.graph_objects as go

    fig.add_trace(
        go.Scatter(
            x=[_time(t) for t, _ in points],
            y=[v for _, v in points],
            mode="lines",
            line={**line, "shape": "hv"},
            **trace,
        ),
        row=row,
        col=1,
    )


def _iso(us: int) -> str:
    return _time(us) + " UTC"


def _groups(n: int, limit: int) -> int:
    """Items per group so that ``n`` items make at most ``limit`` groups."""
    return max(1, math.ceil(n / limit))


def merge_bars(bars: Sequence[dict], limit: int | None = None) -> tuple[list[dict], int]:
    """(candles, bars per candle): ``bars`` (of one symbol, by time) merged in groups of
    consecutive bars so that at most ``limit`` (default ``MAX_POINTS``) remain."""
    k = _groups(len(bars), limit or MAX_POINTS)
    if k == 1:
        return list(bars), 1
    out = []
    for i in range(0, len(bars), k):
        g = bars[i : i + k]
        out.append(
            {
                "window_start": g[0]["window_start"],
                "ts": g[-1]["ts"],
                "open": g[0]["open"],
                "high": max(b["high"] for b in g),
                "low": min(b["low"] for b in g),
                "close": g[-1]["close"],
            }
        )
    return out, k


_V = TypeVar("_V")  # a point's value: a float, or float | None for an indicator


def thin(points: Sequence[tuple[int, _V]], limit: int | None = None, pick=None) -> list[tuple[int, _V]]:
    """At most ``limit`` (default ``MAX_POINTS``) (ts, value) points: per group of
    consecutive points, its last time with ``pick`` of its values (default: the last)."""
    k = _groups(len(points), limit or MAX_POINTS)
    if k == 1:
        return list(points)
    return [
        (points[min(i + k, len(points)) - 1][0], (pick or (lambda v: v[-1]))([v for _, v in points[i : i + k]]))
        for i in range(0, len(points), k)
    ]


def action(before: float, after: float) -> str:
    """What a fill did to its symbol's position."""
    if before == 0.0:
        return "open long" if after > 0 else "open short"
    if after == 0.0:
        return "close long" if before > 0 else "close short"
    if (before > 0) != (after > 0):
        return "reverse to long" if after > 0 else "reverse to short"
    if abs(after) > abs(before):
        return "add to long" if after > 0 else "add to short"
    return "reduce long" if after > 0 else "reduce short"


def is_entry(before: float, after: float) -> bool:
    """A fill that opens, adds to or reverses a position (else it reduces or closes one)."""
    return before == 0.0 or (after != 0.0 and ((before > 0) != (after > 0) or abs(after) > abs(before)))


def traded_first(symbols: Sequence[str], trades: Sequence[dict]) -> list[str]:
    """The symbols, most traded first (then by name)."""
    n: defaultdict[str, int] = defaultdict(int)
    for t in trades:
        n[t["symbol"]] += 1
    return sorted(set(symbols), key=lambda s: (-n[s], s))


def figure(
    curve: Sequence[dict],
    trades: Sequence[dict],
    bars: Sequence[dict] = (),
    indicators: Sequence[dict] = (),
    *,
    width_us: int,
    fills_on_bars: bool = False,
):
    """(the Plotly figure, notes on the bounds reached) of a run's equity curve and
    fills (by time), with ``bars`` and
    ``indicators`` of the strategy interval (``width_us`` long), ``fills_on_bars`` when
    fills take the next bar's open."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    notes: list[str] = []
    by_symbol: dict[str, list[dict]] = defaultdict(list)
    for b in bars:
        by_symbol[b["symbol"]].append(b)
    sets: dict[str, list[dict]] = defaultdict(list)
    for s in indicators:
        sets[s["symbol"]].append(s)
    outcomes = fill_outcomes(trades)
    fills: dict[str, list[tuple[dict, float, float, float | None]]] = defaultdict(list)
    for t, (before, after, pnl) in zip(trades, outcomes):
        fills[t["symbol"]].append((t, before, after, pnl))
    symbols = traded_first(list(by_symbol), trades)
    if len(symbols) > MAX_SYMBOLS:
        notes.append(f"candles of the {MAX_SYMBOLS} most traded of {len(symbols)} symbols")
        symbols = symbols[:MAX_SYMBOLS]

    fig = make_subplots(
        rows=4,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.035,
        row_heights=[0.5, 0.2, 0.12, 0.18],
        subplot_titles=[
            f"{symbols[0]} candles" if symbols else "no bars",
            "equity",
            "drawdown (% below peak)",
            "position (shares)",
        ],
    )
    owner: list[str] = []  # the symbol of each trace of the price panel
    first_shown: list[bool | str] = []  # the trace's visibility when its symbol is picked
    for sym in symbols:
        candles, k = merge_bars(sorted(by_symbol[sym], key=lambda b: b["window_start"]))
        if k > 1:
            notes.append(f"{sym}: each candle merges {k} bars ({len(by_symbol[sym]):,} bars)")
        show = sym == symbols[0]
        fig.add_trace(
            go.Candlestick(
                x=[_time(c["window_start"]) for c in candles],
                open=[c["open"] for c in candles],
                high=[c["high"] for c in candles],
                low=[c["low"] for c in candles],
                close=[c["close"] for c in candles],
                name=sym,
                visible=show,
                increasing={"line": {"color": UP, "width": 1}, "fillcolor": UP},
                decreasing={"line": {"color": DOWN, "width": 1}, "fillcolor": DOWN},
            ),
            row=1,
            col=1,
        )
        owner.append(sym)
        first_shown.append(True)
        ind = sorted(sets.get(sym, []), key=lambda s: s["ts"])
        for name, label, colour, dash, shown in OVERLAYS:
            pts = [(s["ts"] - width_us, s.get(name)) for s in ind]
            if all(v is None for _, v in pts):
                continue
            pts = thin(pts)
            fig.add_trace(
                go.Scatter(
                    x=[_time(t) for t, _ in pts],
                    y=[v for _, v in pts],
                    name=label,
                    mode="lines",
                    line={"color": colour, "width": 1.1, "dash": dash},
                    hoverinfo="skip",
                    visible=(True if shown else "legendonly") if show else False,
                ),
                row=1,
                col=1,
            )
            owner.append(sym)
            first_shown.append(True if shown else "legendonly")
        rows = fills.get(sym, [])
        if len(rows) > MAX_MARKERS:
            notes.append(f"{sym}: markers for the first {MAX_MARKERS:,} of {len(rows):,} fills")
            rows = rows[:MAX_MARKERS]
        size = 11 if len(rows) <= 100 else 9 if len(rows) <= 400 else 7
        for entry in (True, False):
            sel = [r for r in rows if is_entry(r[1], r[2]) == entry]
            if not sel:
                continue
            shift = width_us if fills_on_bars else 0
            fig.add_trace(
                go.Scatter(
                    x=[_time(t["ts"] - shift) for t, *_ in sel],
                    y=[t["price"] for t, *_ in sel],
                    mode="markers",
                    name="entries ▲ buy ▼ sell" if entry else "exits ✕",
                    visible=show,
                    hovertemplate="%{text}<extra></extra>",
                    text=[_fill_text(t, before, after, pnl) for t, before, after, pnl in sel],
                    marker={
                        "size": size,
                        "symbol": [
                            ("triangle-up" if t["side"] == "BUY" else "triangle-down") if entry else "x"
                            for t, *_ in sel
                        ],
                        "color": [BUY if t["side"] == "BUY" else SELL for t, *_ in sel],
                        "line": {"color": "#222222", "width": 1},
                    },
                ),
                row=1,
                col=1,
            )
            owner.append(sym)
            first_shown.append(True)

    eq = [(r["ts"], r["equity"]) for r in curve]
    eq_thin = thin(eq)
    _step_line(fig, eq_thin, 2, name="equity", legend="legend2", line={"color": "#1f5fa8", "width": 1.5})
    gross = thin([(r["ts"], r["gross_exposure"]) for r in curve])
    _step_line(
        fig,
        gross,
        2,
        name="gross exposure",
        visible="legendonly",
        legend="legend2",
        line={"color": "#6c3483", "width": 1},
    )
    dd = thin([(r["ts"], -100.0 * r["drawdown"]) for r in curve], pick=min)
    _step_line(
        fig,
        dd,
        3,
        name="drawdown",
        fill="tozeroy",
        showlegend=False,
        line={"color": "#c0392b", "width": 1},
        fillcolor="rgba(192,57,43,0.35)",
    )
    if len(eq) > MAX_POINTS:
        notes.append(
            f"equity and drawdown: {len(eq_thin):,} of {len(eq):,} points (each group's last equity, deepest drawdown)"
        )
    traded = traded_first([t["symbol"] for t in trades], trades)
    if len(traded) > MAX_SYMBOL_LINES:
        notes.append(f"positions of the {MAX_SYMBOL_LINES} most traded of {len(traded)} symbols")
    start, end = (curve[0]["ts"], curve[-1]["ts"]) if curve else (None, None)
    for sym in sorted(traded[:MAX_SYMBOL_LINES]):
        steps = [(t["ts"], after) for t, _, after, _ in fills[sym]]
        if start is not None and start < steps[0][0]:
            steps.insert(0, (start, 0.0))  # flat from the start
        if end is not None and end > steps[-1][0]:
            steps.append((end, steps[-1][1]))
        steps = thin(steps)
        _step_line(fig, steps, 4, name=f"{sym} position", legend="legend3", line={"width": 1.3})
    fig.add_hline(y=0.0, line={"color": "#444444", "width": 0.6}, row=4, col=1)

    if len(symbols) > 1:  # the price panel's traces come first: the menu sets theirs only
        buttons = [
            {
                "label": sym,
                "method": "update",
                "args": [
                    {"visible": [(v if o == sym else False) for o, v in zip(owner, first_shown)]},
                    {"annotations[0].text": f"{sym} candles", "yaxis.autorange": True},
                    list(range(len(owner))),
                ],
            }
            for sym in symbols
        ]
        fig.update_layout(
            updatemenus=[
                {
                    "buttons": buttons,
                    "direction": "down",
                    "x": 0.0,
                    "xanchor": "left",
                    "y": fig.layout.yaxis.domain[1] + 0.03,
                    "yanchor": "bottom",
                    "showactive": True,
                }
            ]
        )
    inside = {"xanchor": "left", "x": 0.01, "yanchor": "top", "bgcolor": "rgba(255,255,255,0.7)"}
    fig.update_layout(
        template="plotly_white",
        height=1100,
        margin={"l": 70, "r": 40, "t": 60, "b": 40},
        hovermode="x",
        dragmode="zoom",
        modebar={"orientation": "v"},
        legend={
            "orientation": "h",
            "y": fig.layout.yaxis.domain[1] + 0.03,
            "x": 1.0,
            "xanchor": "right",
            "yanchor": "bottom",
        },
        legend2=inside | {"y": fig.layout.yaxis2.domain[1]},
        legend3=inside | {"y": fig.layout.yaxis4.domain[1]},
        font={"family": "system-ui, sans-serif", "size": 12},
    )
    fig.update_xaxes(rangeslider_visible=False, showspikes=True, spikemode="across", spikethickness=1)
    fig.update_yaxes(title_text="price", row=1, col=1)
    fig.update_yaxes(title_text="equity", tickformat=",.0f", row=2, col=1)
    fig.update_yaxes(title_text="%", row=3, col=1)
    fig.update_yaxes(title_text="shares", row=4, col=1)
    return fig, notes


def _fill_text(t: dict, before: float, after: float, pnl: float | None) -> str:
    text = (
        f"{html.escape(t['symbol'])} {t['side']} {t['quantity']:g} @ {t['price']:,.4f}<br>"
        f"{action(before, after)}: {before:g} → {after:g}<br>{_iso(t['ts'])}"
    )
    return text + (f"<br>realized {pnl:,.2f}" if pnl is not None else "")


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.6g}"
    return html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """body{font-family:system-ui,sans-serif;margin:20px 28px;color:#222;background:#fff}
h1{font-size:21px;margin:0 0 4px}h2{font-size:16px;margin:26px 0 6px}.sub{color:#555;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0 4px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.card .k{font-size:12px;color:#666}.card .v{font-size:19px;font-weight:600}
.note{color:#8a5a00;font-size:13px;margin:4px 0}
table{border-collapse:collapse;margin:6px 0 16px;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}.wrap{display:flex;flex-wrap:wrap;gap:28px}
#chart{width:100%;min-height:1100px}"""


def _script_json(obj) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).replace("</", "<\\/")


def document(
    run: dict,
    curve: Sequence[dict],
    trades: Sequence[dict],
    rejections: Sequence[dict] = (),
    bars: Sequence[dict] = (),
    indicators: Sequence[dict] = (),
    *,
    width_us: int,
    fills_on_bars: bool = False,
) -> str:
    """The report's HTML."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    fig, notes = figure(curve, trades, bars, indicators, width_us=width_us, fills_on_bars=fills_on_bars)
    m, c = run["metrics"], run["counts"]
    note = annualized_note(m)
    shown = {k: display(k, m.get(k)) for k, _ in FIGURES}
    labels = dict(FIGURES)
    cards = "".join(
        f'<div class="card"><div class="k">{labels[k]}</div><div class="v">{shown[k]}</div></div>' for k in CARDS
    )
    cards += f'<div class="card"><div class="k">fills</div><div class="v">{c["fills"]:,}</div></div>'
    figures = [[label + (" *" if note and k in ANNUALIZED else ""), shown[k]] for k, label in FIGURES]
    figures += [
        ["orders", f"{c['orders']:,}"],
        ["fills", f"{c['fills']:,}"],
        ["rejections", f"{sum(c['rejections'].values()):,}"],
    ]
    about = [
        ["run", run["run_id"]],
        ["mode", run["mode"]],
        ["period", f"{_iso(run['period_start'])} — {_iso(run['period_end'])}"],
        ["symbols", " ".join(run["symbols"])],
        ["model", run.get("model_version") or "none"],
        ["code", run["code_version"]],
        ["data fingerprint", run["data_fingerprint"]],
        ["results sha256", run["results_sha256"]],
        ["bars", ", ".join(f"{k} {v:,}" for k, v in c["bars"].items())],
        ["predictions", f"{c['predictions']:,}"],
        ["signals", f"{c['signals']:,}"],
    ]
    rej_rows = [
        [_iso(r["ts"]), r["symbol"], r["side"], r["quantity"], r["reason_code"], r["detail"]]
        for r in rejections[:MAX_ROWS]
    ]
    trade_rows = [
        [_iso(t["ts"]), t["symbol"], t["side"], t["quantity"], t["price"], t["commission"], action(before, after), pnl]
        for t, (before, after, pnl) in zip(trades[:MAX_ROWS], fill_outcomes(trades))
    ]
    spec = json.loads(pio.to_json(fig, validate=False, engine="json"))
    title = f"Backtest {run['run_id']}"
    notes_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    rejections_html = (
        (
            _table(["reason", "orders"], [[k, v] for k, v in c["rejections"].items()])
            + (_table(["time", "symbol", "side", "quantity", "reason", "detail"], rej_rows) if rej_rows else "")
        )
        if c["rejections"]
        else "<p>none</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style>
<script>{get_plotlyjs()}</script></head><body>
<h1>{html.escape(title)}</h1>
<div class="sub">{html.escape(" ".join(run["symbols"]))} · {_iso(run["period_start"])} — {_iso(run["period_end"])}
 · model {html.escape(run.get("model_version") or "none")} · {html.escape(run["mode"])}</div>
<div class="cards">{cards}</div>
{f'<p class="note">* {html.escape(note)}</p>' if note else ""}
<div id="chart"></div>
{notes_html}
<div class="wrap"><div><h2>Performance</h2>{_table(["figure", "value"], figures)}</div>
<div><h2>Run</h2>{_table(["", ""], about)}</div></div>
<h2>Rejections</h2>
{rejections_html}
<h2>Trades</h2>
<p>{len(trades):,} fills{f" (the first {MAX_ROWS} below)" if len(trades) > MAX_ROWS else ""}.</p>
{_table(["time", "symbol", "side", "quantity", "price", "commission", "action", "realized PnL"], trade_rows)}
<script>
var spec = {_script_json(spec)};
Plotly.newPlot("chart", spec.data, spec.layout, {_script_json(CONFIG)}).then(function () {{
  document.body.setAttribute("data-rendered", "1");
}});
</script>
</body></html>
"""


def write(
    path: str | Path,
    run: dict,
    curve: Sequence[dict],
    trades: Sequence[dict],
    rejections: Sequence[dict] = (),
    bars: Sequence[dict] = (),
    indicators: Sequence[dict] = (),
    *,
    width_us: int,
    fills_on_bars: bool = False,
) -> Path:
    """Write the HTML report of a run; its path.

    ``run`` holds the run's row: run_id, mode, period_start/period_end (µs), symbols,
    model_version, code_version, data_fingerprint, results_sha256, metrics, counts;
    ``curve`` and ``trades`` its equity curve and fills, ``bars`` and ``indicators``
    the strategy interval's (``width_us``), ``fills_on_bars`` when fills take the next
    bar's open."""
    path = Path(path)
    doc = document(run, curve, trades, rejections, bars, indicators, width_us=width_us, fills_on_bars=fills_on_bars)
    _atomic(path, doc.encode())
    return path


def _atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # as a plain open() would create it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

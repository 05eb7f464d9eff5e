"""The backtest report: one self-contained HTML file (charts inlined as PNG data URIs,
no external asset) and a PNG of the equity curve beside it.

Charts: equity, drawdown, positions over time (gross exposure from the curve and each
traded symbol's position from the fills), rejections by reason.  Written atomically
(temporary file renamed into place).
"""
from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter  # noqa: E402

from .core.trading import side_sign  # noqa: E402

MAX_SYMBOL_LINES = 8  # symbols drawn in the positions chart (most traded first)
MAX_ROWS = 200  # rows of the trades and rejections tables


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _time_axis(ax) -> None:
    loc = AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(loc))
    ax.grid(alpha=0.3)


def equity_png(curve: list[dict], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot([_dt(r["ts"]) for r in curve], [r["equity"] for r in curve], color="#1f5fa8", lw=1.4,
            drawstyle="steps-post")
    ax.set_title(title)
    ax.set_ylabel("equity")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    _time_axis(ax)
    return _png(fig)


def drawdown_png(curve: list[dict]) -> bytes:
    fig, ax = plt.subplots(figsize=(10, 2.6))
    ts = [_dt(r["ts"]) for r in curve]
    dd = [-100.0 * r["drawdown"] for r in curve]
    ax.fill_between(ts, dd, 0.0, step="post", color="#c0392b", alpha=0.5)
    ax.set_title("drawdown")
    ax.set_ylabel("% below peak")
    _time_axis(ax)
    return _png(fig)


def positions_png(curve: list[dict], trades: list[dict]) -> bytes:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.4), sharex=True)
    top.plot([_dt(r["ts"]) for r in curve], [r["gross_exposure"] for r in curve], color="#6c3483",
             drawstyle="steps-post")
    top.set_title("positions over time")
    top.set_ylabel("gross exposure")
    top.ticklabel_format(axis="y", useOffset=False, style="plain")
    _time_axis(top)
    per_symbol: dict[str, list[dict]] = defaultdict(list)
    for t in trades:
        per_symbol[t["symbol"]].append(t)
    busiest = sorted(per_symbol, key=lambda s: (-len(per_symbol[s]), s))[:MAX_SYMBOL_LINES]
    end = _dt(curve[-1]["ts"]) if curve else None
    for sym in sorted(busiest):
        qty, xs, ys = 0.0, [], []
        for t in per_symbol[sym]:
            qty += side_sign(t["side"]) * t["quantity"]
            xs.append(_dt(t["ts"]))
            ys.append(qty)
        if end is not None and xs and end > xs[-1]:
            xs.append(end)
            ys.append(qty)
        bottom.plot(xs, ys, drawstyle="steps-post", lw=1.2, label=sym)
    bottom.axhline(0.0, color="black", lw=0.6)
    bottom.set_ylabel("position (shares)")
    if busiest:
        bottom.legend(loc="upper left", fontsize=8, ncol=min(4, len(busiest)))
    _time_axis(bottom)
    return _png(fig)


def rejections_png(by_reason: dict[str, int]) -> bytes:
    fig, ax = plt.subplots(figsize=(10, 2.6))
    reasons = sorted(by_reason)
    ax.barh(reasons or ["(none)"], [by_reason[r] for r in reasons] or [0], color="#d68910")
    ax.set_title("rejections by reason")
    ax.set_xlabel("orders rejected")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.6g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _iso(us: int) -> str:
    return _dt(us).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:6px 0 18px}
h1{font-size:22px}h2{font-size:17px;margin-top:26px}code{font-size:12px}"""


def write(path: str | Path, run: dict, curve: list[dict], trades: list[dict],
          rejections: list[dict] | None = None) -> tuple[Path, Path]:
    """Write the HTML report and ``<path stem>.png`` (the equity curve); both paths.

    ``run`` holds the run's row: run_id, mode, period_start/period_end (µs), symbols,
    model_version, code_version, data_fingerprint, results_sha256, metrics, counts."""
    path = Path(path)
    png_path = path.with_suffix(".png")
    eq = equity_png(curve, f"equity — backtest {run['run_id']}")
    m, c = run["metrics"], run["counts"]
    figures = [["total return", m["total_return"]], ["CAGR", m["cagr"]], ["Sharpe", m["sharpe"]],
               ["Sortino", m["sortino"]], ["max drawdown", m["max_drawdown"]], ["win rate", m["win_rate"]],
               ["closing trades", m["closing_trades"]], ["turnover", m["turnover"]],
               ["start equity", m["start_equity"]], ["end equity", m["end_equity"]],
               ["orders", c["orders"]], ["fills", c["fills"]], ["rejections", sum(c["rejections"].values())]]
    about = [["run", run["run_id"]], ["mode", run["mode"]], ["period", f"{_iso(run['period_start'])} — "
                                                                        f"{_iso(run['period_end'])}"],
             ["symbols", " ".join(run["symbols"])], ["model", run.get("model_version") or "none"],
             ["code", run["code_version"]], ["data fingerprint", run["data_fingerprint"]],
             ["results sha256", run["results_sha256"]],
             ["bars", ", ".join(f"{k} {v}" for k, v in c["bars"].items())],
             ["predictions", c["predictions"]], ["signals", c["signals"]]]
    rej_rows = [[_iso(r["ts"]), r["symbol"], r["side"], r["quantity"], r["reason_code"], r["detail"]]
                for r in (rejections or [])[:MAX_ROWS]]
    trade_rows = [[_iso(t["ts"]), t["symbol"], t["side"], t["quantity"], t["price"], t["commission"]]
                  for t in trades[:MAX_ROWS]]
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>backtest {html.escape(run['run_id'])}</title>
<style>{CSS}</style></head><body>
<h1>Backtest {html.escape(run['run_id'])}</h1>
{_table(["run", ""], about)}
<h2>Performance</h2>
{_table(["figure", "value"], figures)}
<h2>Equity curve</h2>
{_img(eq, "equity curve")}
<h2>Drawdown</h2>
{_img(drawdown_png(curve), "drawdown")}
<h2>Positions over time</h2>
{_img(positions_png(curve, trades), "positions over time")}
<h2>Rejections</h2>
{_img(rejections_png(c["rejections"]), "rejections by reason")}
{_table(["reason", "orders"], [[k, v] for k, v in c["rejections"].items()])}
{_table(["time", "symbol", "side", "quantity", "reason", "detail"], rej_rows) if rej_rows else ""}
<h2>Trades</h2>
<p>{len(trades)} fills{f" (the first {MAX_ROWS} below)" if len(trades) > MAX_ROWS else ""}.</p>
{_table(["time", "symbol", "side", "quantity", "price", "commission"], trade_rows)}
</body></html>
"""
    _atomic(path, doc.encode())
    _atomic(png_path, eq)
    return path, png_path


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

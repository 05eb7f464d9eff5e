"""The backtest report: a real run of the repo's daily GOOG bars (a model trained on their
early part, in a model directory) drawn exactly — candles, fills as entry and exit
markers, indicator overlays, equity, drawdown, positions — with the command's figures and
units, n/a for annualized figures on a short run; self-contained (no script or asset
from anywhere) and byte-for-byte deterministic; bounded; and looked at in headless
Chromium: rendered from the file alone, the candle area is drawn in the candle and
marker colours."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from producers.replay import read_csv
from ticktape import report
from ticktape.commands import backtest as command
from ticktape.config import REPO_ROOT, settings
from ticktape.core.features import FEATURE_NAMES, Bars, build_dataset
from ticktape.core.ml import TrainParams, train
from ticktape.core.performance import display, fill_outcomes, span_text
from ticktape.core.simbars import simulated_bars
from ticktape.registry import ARTIFACT_FILE, METADATA_FILE, metadata_json

GOOG = REPO_ROOT / "tests" / "data" / "GOOG_daily.csv"
DAY = 86_400_000_000
TRADING = {"strategy_enter_p": 0.52, "strategy_exit_p": 0.51, "strategy_min_hold_bars": 1}


def _us(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp() * 1_000_000)


@dataclass
class Run:
    row: dict
    result: object
    events: object
    setup: object
    bars: list  # the strategy interval's
    indicators: list

    def write(self, path: Path) -> Path:
        return command.write_report(
            path,
            self.row,
            self.result,
            self.setup,
            self.events["bar"],
            self.events["indicator_set"],
            self.events["order_rejected"],
        )


def backtest(s, model: Path, bars: list[dict] | None = None, start: int | None = None) -> Run:
    """The command's own path (``--source csv --input GOOG_daily.csv``, or other bars),
    without storing."""
    bars = bars or read_csv(str(GOOG), None, "GOOG")[1]
    symbols = tuple(sorted({b["symbol"] for b in bars}))
    market = command.table_market("bars", "bar", bars, start, None, set(symbols))
    plan = command.prepare(s, market, symbols, str(model), None, start, None)
    setup = plan.setups[0]
    ev = command.simulate(plan, setup)
    row, result = command.finish(plan, setup, ev, "0123456789ab", save=False)
    return Run(row, result, ev, setup, ev["bar"], ev["indicator_set"])


def model_dir(d: Path, bars: list[dict], interval: str, features: list[str]) -> Path:
    """A model trained on ``bars``, as a model directory (the registry's files)."""
    trained = train(
        build_dataset(Bars.from_events(bars), interval, 5), features, 0.2, TrainParams(rounds=30), "direction"
    )
    (d / ARTIFACT_FILE).write_bytes(trained.artifact)
    (d / METADATA_FILE).write_bytes(metadata_json(trained.metadata))
    return d


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A 1d model of the GOOG bars before 2009."""
    _, bars = read_csv(str(GOOG), None, "GOOG")
    early = [b for b in bars if b["window_start"] < _us("2009-01-01")]
    return model_dir(tmp_path_factory.mktemp("model"), early, "1d", list(FEATURE_NAMES))


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    return settings(database_url="", home=str(tmp_path_factory.mktemp("home")), **TRADING)


@pytest.fixture(scope="module")
def goog(s, model) -> Run:
    return backtest(s, model)


def price_traces(fig) -> dict[str, object]:
    return {t.name: t for t in fig.data if t.xaxis == "x" and t.yaxis == "y"}


def by_name(fig, name: str):
    [t] = [t for t in fig.data if t.name == name]
    return t


# --- the chart ---------------------------------------------------------------------------


def test_the_chart_draws_the_runs_bars_fills_and_indicators_exactly(goog):
    fig, notes = report.figure(
        goog.result.equity, goog.result.trades, goog.bars, goog.indicators, width_us=DAY, fills_on_bars=True
    )
    assert notes == []  # 2,148 bars, 264 fills: no bound reached
    price = price_traces(fig)
    assert set(price) == {
        "GOOG",
        "BB upper",
        "BB middle",
        "BB lower",
        "EMA 12",
        "EMA 26",
        "SMA 10",
        "SMA 20",
        "SMA 50",
        "SMA 200",
        "VWAP",
        "entries ▲ buy ▼ sell",
        "exits ✕",
    }
    candles = price["GOOG"]
    assert len(candles.x) == 2148 and candles.x[0] == "2004-08-19 00:00:00" and candles.x[-1] == "2013-03-01 00:00:00"
    bars = goog.bars
    assert list(candles.open) == [b["open"] for b in bars] and list(candles.high) == [b["high"] for b in bars]
    assert list(candles.low) == [b["low"] for b in bars] and list(candles.close) == [b["close"] for b in bars]
    assert (candles.open[0], candles.high[0], candles.low[0], candles.close[0]) == (100.0, 104.06, 95.96, 100.34)

    # every fill is a marker on the bar whose open it took, at its price
    fills = goog.result.trades
    entries, exits = price["entries ▲ buy ▼ sell"], price["exits ✕"]
    assert len(entries.x) + len(exits.x) == len(fills) == goog.row["counts"]["fills"] > 50
    opens = {report._time(b["window_start"]): b["open"] for b in bars}
    slip = goog.setup.execution.slippage_bps / 1e4
    marked = sorted(zip(entries.x + exits.x, entries.y + exits.y, entries.text + exits.text))
    for (x, y, text), f in zip(
        marked, sorted(fills, key=lambda f: (report._time(f["ts"] - DAY), f["price"], f["side"]))
    ):
        assert (x, y) == (report._time(f["ts"] - DAY), f["price"])
        assert y == pytest.approx(opens[x] * (1 + slip if f["side"] == "BUY" else 1 - slip), rel=1e-12)
        assert text.startswith(f"GOOG {f['side']} {f['quantity']:g} @ ")
    outcomes = fill_outcomes(fills)
    n_exit = sum(
        1
        for before, after, _ in outcomes
        if before != 0
        and after != 0
        and (before > 0) == (after > 0)
        and abs(after) < abs(before)
        or before != 0
        and after == 0
    )
    assert len(exits.x) == n_exit and all(re.search(r"<br>(close|reduce) (long|short):", t) for t in exits.text)
    assert all(re.search(r"<br>(open|add to|reverse to) (long|short):", t) for t in entries.text)
    assert list(entries.marker.symbol).count("triangle-up") == sum(
        1 for t, (b, a, _) in zip(fills, outcomes) if t["side"] == "BUY" and report.is_entry(b, a)
    )
    assert set(exits.marker.symbol) == {"x"}

    # overlays: the indicator sets' values at their bar's window start; lookback gaps as null
    sets = goog.indicators
    bb = price["BB upper"]
    assert list(bb.x) == [report._time(s["ts"] - DAY) for s in sets] and list(bb.y) == [s["bb_upper"] for s in sets]
    assert bb.y[18] is None and bb.y[19] == pytest.approx(sets[19]["bb_upper"]) and bb.visible is True
    assert price["SMA 200"].visible == "legendonly" and list(price["EMA 26"].y) == [s["ema_26"] for s in sets]

    # equity, drawdown (% below peak), positions (shares after each fill, held to the end)
    curve = goog.result.equity
    eq = by_name(fig, "equity")
    assert list(eq.y) == [r["equity"] for r in curve] and eq.x[0] == "2004-08-19 00:00:00" and eq.yaxis == "y2"
    dd = by_name(fig, "drawdown")
    assert list(dd.y) == [-100.0 * r["drawdown"] for r in curve] and min(dd.y) < 0 and dd.yaxis == "y3"
    pos = by_name(fig, "GOOG position")
    final = [p for p in goog.events["position"] if p["symbol"] == "GOOG"][-1]["quantity"]
    assert list(pos.y[1:-1]) == [after for _, after, _ in outcomes] and pos.y[-1] == final and pos.y[0] == 0.0
    assert (pos.x[0], pos.x[-1]) == (report._time(curve[0]["ts"]), report._time(curve[-1]["ts"]))
    assert pos.yaxis == "y4"
    assert fig.layout.updatemenus == ()  # one symbol: no menu


def test_a_menu_picks_the_symbol_most_traded_first():
    def bar(sym, i, px):
        return {
            "symbol": sym,
            "interval": "1d",
            "window_start": i * DAY,
            "ts": (i + 1) * DAY,
            "open": px,
            "high": px + 1,
            "low": px - 1,
            "close": px + 0.5,
        }

    bars = [bar(sym, i, px + i) for i in range(5) for sym, px in (("AAA", 10.0), ("BBB", 50.0))]
    trades = [
        {"ts": 2 * DAY, "symbol": "BBB", "side": "BUY", "quantity": 3.0, "price": 52.0},
        {"ts": 3 * DAY, "symbol": "BBB", "side": "SELL", "quantity": 3.0, "price": 53.0},
    ]
    curve = [{"ts": i * DAY, "equity": 100.0, "gross_exposure": 0.0, "drawdown": 0.0} for i in range(6)]
    fig, _ = report.figure(curve, trades, bars, (), width_us=DAY)
    names = [(t.name, t.visible) for t in fig.data if t.yaxis == "y"]
    assert names == [("BBB", True), ("entries ▲ buy ▼ sell", True), ("exits ✕", True), ("AAA", False)]
    [menu] = fig.layout.updatemenus
    assert [b.label for b in menu.buttons] == ["BBB", "AAA"]
    assert menu.buttons[1].args == (
        {"visible": [False, False, False, True]},
        {"annotations[0].text": "AAA candles", "yaxis.autorange": True},
        (0, 1, 2, 3),
    )
    assert fig.layout.annotations[0].text == "BBB candles"
    assert by_name(fig, "BBB position").y == (0.0, 3.0, 0.0, 0.0)  # flat, bought, sold, flat to the end


def test_many_bars_merge_into_at_most_the_bound_and_lines_thin(goog):
    candles, k = report.merge_bars(goog.bars, 500)
    assert (k, len(candles)) == (5, 430)
    first = goog.bars[:5]
    assert candles[0] == {
        "window_start": first[0]["window_start"],
        "ts": first[-1]["ts"],
        "open": 100.0,
        "high": max(b["high"] for b in first),
        "low": min(b["low"] for b in first),
        "close": first[-1]["close"],
    }
    last = goog.bars[2145:]  # the last group: 3 bars
    assert candles[-1]["close"] == last[-1]["close"] and candles[-1]["window_start"] == last[0]["window_start"]
    pts = [(i, float(v)) for i, v in enumerate([5, 3, 9, 1, 7, 2, 8])]
    assert report.thin(pts, 3) == [(2, 9.0), (5, 2.0), (6, 8.0)]
    assert report.thin(pts, 3, pick=min) == [(2, 3.0), (5, 1.0), (6, 8.0)]
    assert report.thin(pts, 7) == pts


def test_bounds_reached_are_said_in_the_report(goog, monkeypatch):
    monkeypatch.setattr(report, "MAX_POINTS", 1000)
    monkeypatch.setattr(report, "MAX_MARKERS", 100)
    fig, notes = report.figure(
        goog.result.equity, goog.result.trades, goog.bars, goog.indicators, width_us=DAY, fills_on_bars=True
    )
    n = len(goog.result.trades)
    assert notes == [
        "GOOG: each candle merges 3 bars (2,148 bars)",
        f"GOOG: markers for the first 100 of {n} fills",
        f"equity and drawdown: 975 of {len(goog.result.equity):,} points (each group's last equity, deepest drawdown)",
    ]
    price = price_traces(fig)
    assert len(price["GOOG"].x) == 716 and len(price["entries ▲ buy ▼ sell"].x) + len(price["exits ✕"].x) == 100


# --- the page ----------------------------------------------------------------------------


class Assets(HTMLParser):
    """Every element that could load something, and the scripts' text."""

    def __init__(self):
        super().__init__()
        self.loads: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "link", "img", "iframe", "embed", "object", "source", "video", "audio") or any(
            k in a for k in ("src", "href", "srcset", "data")
        ):
            self.loads.append((tag, a))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def test_the_page_is_self_contained_and_the_same_bytes_every_time(goog, tmp_path):
    path = goog.write(tmp_path / "a" / "report.html")
    again = goog.write(tmp_path / "b" / "report.html")
    page = path.read_bytes()
    assert page == again.read_bytes() and not path.with_suffix(".png").exists()
    parser = Assets()
    parser.feed(page.decode())
    assert parser.loads == [("script", {}), ("script", {})]  # plotly.js and the chart, inline: nothing to load
    plotly_js, chart = parser.scripts
    import plotly.offline

    assert plotly_js == plotly.offline.get_plotlyjs()
    assert "url(" not in page.decode().split("<script>")[0]  # the CSS loads no font or image
    spec = json.loads(re.search(r"var spec = (\{.*?\});\n", chart).group(1).replace("<\\/", "</"))
    assert [t["name"] for t in spec["data"]][:1] == ["GOOG"] and len(spec["data"][0]["x"]) == 2148
    assert 'Plotly.newPlot("chart", spec.data, spec.layout' in chart


def test_the_figures_are_the_commands_in_the_same_units(goog, tmp_path):
    page = goog.write(tmp_path / "report.html").read_text()
    m, c = goog.row["metrics"], goog.row["counts"]
    printed = "\n".join(command.figure_lines(m, c))
    for key, label in report.FIGURES:
        shown = display(key, m[key])
        assert f"<tr><td>{label}</td><td>{shown}</td></tr>" in page
        if key not in ("traded_notional", "start_equity", "span_us", "sortino", "closing_trades"):
            assert shown in printed
    assert display("total_return", m["total_return"]).endswith(" %") and "3,117.0 days" in page
    assert f'<div class="k">CAGR</div><div class="v">{display("cagr", m["cagr"])}</div>' in page
    assert m["cagr"] is not None and m["sharpe"] is not None and "not meaningful" not in page + printed
    assert f"<p>{c['fills']:,} fills (the first 200 below).</p>" in page


def test_a_short_run_shows_annualized_figures_as_not_meaningful(s, tmp_path):
    # four hours of simulated minute bars, a minute model trained on the eight before: trades,
    # and no CAGR -100 % or Sharpe in the thousands but n/a with the reason
    t0 = _us("2024-01-02T14:30:00")
    bars = simulated_bars(["AAA", "BBB"], seed=5, start_us=t0, minutes=720, tick_rate=5.0)
    start = t0 + 480 * 60_000_000
    short = [f for f in FEATURE_NAMES if f not in ("sma_200_rel", "sma_50_rel")]
    minute = model_dir(tmp_path, [b for b in bars if b["window_end"] <= start], "1m", short)
    run = backtest(s, minute, bars, start)
    m = run.row["metrics"]
    assert run.row["counts"]["fills"] >= 10 and m["total_return"] != 0.0
    assert (m["cagr"], m["sharpe"], m["sortino"]) == (None, None, None)
    assert 3 * 3600e6 < m["span_us"] <= 4 * 3600e6
    note = (
        f"CAGR, Sharpe and Sortino are not meaningful over an equity curve of {span_text(m['span_us'])}: "
        f"annualized figures need at least 30 days"
    )
    printed = command.figure_lines(m, run.row["counts"])
    assert printed[0].endswith("CAGR n/a") and printed[1].split() == ["Sharpe", "n/a", "Sortino", "n/a"]
    assert printed[-1] == f"  ({note})"
    page = run.write(tmp_path / "short.html").read_text()
    assert f'<p class="note">* {note}</p>' in page
    assert '<div class="k">CAGR</div><div class="v">n/a</div>' in page
    for label in ("CAGR", "Sharpe", "Sortino"):
        assert f"<tr><td>{label} *</td><td>n/a</td></tr>" in page


def test_the_command_writes_the_report(services, model, tmp_path):
    from pipeline import new_database

    with new_database(services["DATABASE_URL"]) as url:
        env = dict(os.environ) | {
            "DATABASE_URL": url,
            "TICKTAPE_HOME": str(tmp_path / "home"),
            "STRATEGY_ENTER_P": "0.52",
            "STRATEGY_EXIT_P": "0.51",
            "STRATEGY_MIN_HOLD_BARS": "1",
            "PYTHONPATH": str(REPO_ROOT),
        }
        out = tmp_path / "goog.html"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ticktape.cli",
                "backtest",
                "--source",
                "csv",
                "--input",
                str(GOOG),
                "--symbols",
                "GOOG",
                "--model",
                str(model),
                "--report",
                str(out),
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"report {out}"
    run_id = re.search(r"^backtest ([0-9a-f]{12}) stored", proc.stdout, re.M).group(1)
    page = out.read_text()
    assert f"<title>Backtest {run_id}</title>" in page
    total = re.search(r"total return +(\S+ %)", proc.stdout).group(1)
    assert f'<div class="k">total return</div><div class="v">{total}</div>' in page


# --- in a browser ------------------------------------------------------------------------


def _colour(hex_: str) -> tuple[int, int, int]:
    return tuple(int(hex_[i : i + 2], 16) for i in (1, 3, 5))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium (the Debian packages chromium and chromium-driver), logging every request."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("chromium / chromedriver not installed (Debian packages chromium chromium-driver: `make system`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1400,1400",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path_factory.mktemp('chrome')}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(driver_path))
    driver.set_page_load_timeout(300)
    yield driver
    driver.quit()


def open_report(driver, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.as_uri())
    WebDriverWait(driver, 300).until(lambda d: d.execute_script("return document.body.dataset.rendered"))


def candle_area(driver, path: Path):
    """The candle panel's plot area in a screenshot, as an RGB image (kept beside ``path``)."""
    from PIL import Image

    left, top, width, height = driver.execute_script(
        "var c = document.getElementById('chart'), r = c.getBoundingClientRect(), l = c._fullLayout;"
        "return [r.left + l.xaxis._offset, r.top + l.yaxis._offset, l.xaxis._length, l.yaxis._length];"
    )
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    shot.save(path.with_suffix(".png"))  # with the test's tmp files, to look at
    assert width > 800 and height > 300 and left + width <= shot.size[0] and top + height <= shot.size[1]
    return shot.crop((int(left), int(top), int(left + width), int(top + height)))


def colours(area) -> dict[tuple[int, int, int], int]:
    return {colour: n for n, colour in area.getcolors(area.width * area.height)}


@pytest.mark.slow
def test_headless_chromium_draws_the_candles_from_the_file_alone(browser, goog, tmp_path):
    path = goog.write(tmp_path / "report.html")
    browser.get_log("performance")  # what came before: the browser's own start page
    open_report(browser, path)
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    assert browser.execute_script("return document.getElementById('chart').data[0].name") == "GOOG"
    counts = colours(candle_area(browser, path))
    pixels = sum(counts.values())
    assert counts.get((255, 255, 255), 0) < 0.97 * pixels and len(counts) > 100  # drawn, and in many shades
    for name in ("UP", "DOWN", "BUY", "SELL"):  # up and down candles, buy and sell markers
        assert counts.get(_colour(getattr(report, name)), 0) >= 20, name
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert path.as_uri() in urls and {u.split(":", 1)[0] for u in urls} <= {"file", "data"}, urls  # no network


@pytest.mark.slow
def test_in_chromium_the_menu_shows_the_picked_symbols_candles(browser, goog, tmp_path):
    # GOOG and a copy of it at a tenth of the price: each symbol's candles on their own scale
    tenth = [b | {"symbol": "GOOT", **{k: b[k] / 10 for k in ("open", "high", "low", "close")}} for b in goog.bars]
    path = report.write(
        tmp_path / "two.html",
        goog.row,
        goog.result.equity,
        goog.result.trades,
        (),
        goog.bars + tenth,
        goog.indicators,
        width_us=DAY,
        fills_on_bars=True,
    )
    open_report(browser, path)
    y_range = "return document.getElementById('chart')._fullLayout.yaxis.range"
    assert browser.execute_script(y_range)[1] > 700  # GOOG up to 800
    browser.execute_async_script(  # what a click on the menu's second entry does
        "var gd = document.getElementById('chart'), b = gd.layout.updatemenus[0].buttons[1], done = arguments[0];"
        "Plotly.update(gd, b.args[0], b.args[1], b.args[2]).then(function () { done(); });"
    )
    shown = browser.execute_script(
        "return document.getElementById('chart').data.filter(function (t) {"
        " return t.visible === true && t.yaxis === 'y'; }).map(function (t) {"
        " return t.name; });"
    )
    assert shown == ["GOOT"]  # no indicator sets, no fills of its own
    assert (
        browser.execute_script("return document.getElementById('chart').layout.annotations[0].text") == "GOOT candles"
    )
    assert browser.execute_script(y_range)[1] < 90  # rescaled to GOOT's prices
    counts = colours(candle_area(browser, path))
    assert counts.get(_colour(report.UP), 0) >= 20 and counts.get(_colour(report.DOWN), 0) >= 20
    assert counts.get(_colour(report.BUY), 0) == 0  # GOOG's markers went with its candles


def test_the_readme_shows_a_screenshot_of_a_report():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "](docs/report.png)" in readme and "--screenshot=docs/report.png goog.html" in readme
    png = (REPO_ROOT / "docs" / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and 50_000 < len(png) < 300_000

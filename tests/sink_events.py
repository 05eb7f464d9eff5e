"""Helpers of the sink tests: valid events of every type, producing them to real topics,
running a sink until it has committed given offsets, reading a topic back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from ticktape import kafka_clients
from ticktape.config import REPO_ROOT, Settings
from ticktape.serde import Serde
from ticktape.stack import free_port

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in microseconds
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "JPM", "XOM", "KO", "V"]

# catalog topic -> event type, for every topic of record
TOPIC_EVENTS = {
    "md.ticks": "tick",
    "md.bars.1s": "bar",
    "md.bars.1m": "bar",
    "analytics.indicators": "indicator_set",
    "ml.predictions": "prediction",
    "trading.signals": "signal",
    "trading.orders": "order",
    "trading.orders.rejected": "order_rejected",
    "trading.fills": "fill",
    "trading.positions": "position",
    "trading.equity": "equity",
    "trading.risk": "risk_state",
}


def event(kind: str, i: int, *, symbol: str | None = None, interval: str = "1m", ts: int | None = None) -> dict:
    """The i-th valid event of a type (deterministic; distinct event_id per kind and i)."""
    sym = symbol or SYMBOLS[i % len(SYMBOLS)]
    ts = T0 + i * 1_000_000 if ts is None else ts
    base = {"event_id": f"{kind}-{interval}-{i}", "ts": ts}
    price = 100.0 + (i % 97) * 0.25
    if kind == "tick":
        return base | {
            "symbol": sym,
            "source": "sim",
            "seq": i,
            "price": price,
            "size": 10.0 + i % 7,
            "bid": price - 0.01,
            "ask": price + 0.01,
            "bid_size": 5.0,
            "ask_size": None,
        }
    if kind == "bar":
        step = 60_000_000 if interval == "1m" else 1_000_000
        start = T0 + i * step
        return {
            "event_id": f"bar-{interval}-{sym}-{i}",
            "symbol": sym,
            "interval": interval,
            "ts": start + step,
            "window_start": start,
            "window_end": start + step,
            "open": price,
            "high": price + 1,
            "low": price - 1,
            "close": price + 0.5,
            "volume": 100.0 + i,
            "vwap": price + 0.1,
            "trade_count": 3 + i % 5,
        }
    if kind == "indicator_set":
        return base | {
            "symbol": sym,
            "interval": interval,
            "close": price,
            "volume": 50.0,
            "sma_10": price,
            "rsi_14": 55.5,
            "macd": None,
            "obv": -12.0,
            "extra": {"range_5": 0.25, "warming_up": None},  # user indicators (v2)
        }
    if kind == "prediction":
        return base | {
            "symbol": sym,
            "interval": interval,
            "model_name": "xgb",
            "model_version": "v3",
            "p_up": 0.25 + (i % 50) / 100,
            "horizon": 5,
            "features": {"rsi_14": 55.5, "ret_1": -0.001},
            "close": 100.0 + i,
            "volatility_20": 0.2,
        }
    trade = {"account": "paper", "symbol": sym, "side": "BUY" if i % 2 else "SELL"}
    if kind == "signal":
        return (
            base
            | trade
            | {
                "quantity": 10.0,
                "target_position": 10.0,
                "reference_price": price,
                "strategy": "threshold",
                "reason": "p_up>0.6",
                "model_version": None,
            }
        )
    if kind == "order":
        return (
            base
            | trade
            | {
                "quantity": 10.0,
                "order_type": "MARKET",
                "limit_price": None,
                "reference_price": price,
                "signal_id": f"signal-{i}",
            }
        )
    if kind == "order_rejected":
        return (
            base
            | trade
            | {
                "quantity": 10.0,
                "reference_price": price,
                "reason_code": "PRICE_COLLAR",
                "detail": "price 3% from last trade",
                "signal_id": f"signal-{i}",
            }
        )
    if kind == "fill":
        return (
            base
            | trade
            | {"order_id": f"order-{i}", "quantity": 10.0, "price": price, "commission": 0.5, "slippage_bps": 1.5}
        )
    if kind == "position":
        return base | {
            "account": "paper",
            "symbol": sym,
            "quantity": float(i),
            "avg_cost": price,
            "realized_pnl": 1.0,
            "unrealized_pnl": -2.0,
            "last_price": price,
            "market_value": i * price,
        }
    if kind == "equity":
        return base | {
            "account": "paper",
            "cash": 1e6 - i,
            "market_value": float(i),
            "equity": 1e6,
            "gross_exposure": float(i),
            "realized_pnl": 0.0,
            "unrealized_pnl": 0.0,
        }
    if kind == "risk_state":
        return base | {
            "account": "paper",
            "trading_state": "HALTED",
            "reason": "DAILY_LOSS_LIMIT",
            "detail": "daily loss 20001.00 reached the limit 20000.00",
            "equity": 1e6 - i,
            "daily_pnl": -20001.0,
        }
    raise ValueError(kind)


def produce(
    s: Settings, topic: str, kind: str, records: list[dict], *, raw: list[tuple[bytes, bytes]] = ()
) -> dict[tuple[str, int], int]:
    """Produce events (then raw (key, value) messages) to a catalog topic; returns the next
    offset per (full topic, partition) from the delivery reports."""
    serde = Serde(s.schema_registry_url)
    prod = kafka_clients.producer(s)
    full = s.topic(topic)
    ends: dict[tuple[str, int], int] = {}
    errors = []

    def report(err, msg):
        if err:
            errors.append(err)
        else:
            key = (msg.topic(), msg.partition())
            ends[key] = max(ends.get(key, 0), msg.offset() + 1)

    for r in records:
        key = r.get("symbol") or r.get("account")
        prod.produce(full, key=key.encode(), value=serde.encode(kind, r, full), on_delivery=report)
        prod.poll(0)
    for key, value in raw:
        prod.produce(full, key=key, value=value, on_delivery=report)
    assert prod.flush(30) == 0 and not errors, errors
    return ends


def merge(*ends: dict) -> dict:
    out: dict = {}
    for e in ends:
        for k, v in e.items():
            out[k] = max(out.get(k, 0), v)
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def caught_up(runner, ends: dict) -> bool:
    return all(runner.committed.get(k, 0) >= v for k, v in ends.items())


def run_until_committed(runner, ends: dict, timeout: float = 60.0) -> int:
    """Run a SinkRunner in a thread until it has committed `ends`; stop it; its exit code."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", runner.run()), daemon=True)
    thread.start()
    try:
        wait_for(lambda: caught_up(runner, ends) or not thread.is_alive(), timeout, f"offsets {ends}")
    finally:
        runner.stop()
        thread.join(30)
    assert caught_up(runner, ends), (runner.committed, ends)
    return result["rc"]


def read_topic(
    s: Settings,
    full_topic: str,
    count: int,
    *,
    partition: int = 0,
    offset: int = OFFSET_BEGINNING,
    timeout: float = 20.0,
) -> list:
    """Up to `count` messages of one partition from an offset (assigned: no group join)."""
    cons = kafka_clients.consumer(s, "unused")
    cons.assign([TopicPartition(full_topic, partition, offset)])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            m = cons.poll(0.2)
            if m is not None and not m.error():
                out.append(m)
    finally:
        cons.close()
    return out


def committed_offsets(s: Settings, group: str, ends: dict) -> dict:
    cons = kafka_clients.consumer(s, group)
    try:
        tps = cons.committed([TopicPartition(t, p) for t, p in ends], timeout=10)
    finally:
        cons.close()
    return {(tp.topic, tp.partition): tp.offset for tp in tps}


def spawn_sink(s: Settings, target: str, topics: list[str], log: Path, **env_extra) -> subprocess.Popen:
    """`python -m ticktape.cli sink <target>` as a real process with the test's settings."""
    env = (
        dict(os.environ)
        | {
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "DATABASE_URL": s.database_url,
            "REDIS_URL": s.redis_url,
            "TOPIC_PREFIX": s.topic_prefix,
            "TICKTAPE_HOME": s.home,
            "METRICS_PORT": str(free_port()),
            "PYTHONPATH": str(REPO_ROOT),
        }
        | {k: str(v) for k, v in env_extra.items()}
    )
    out = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "ticktape.cli", "sink", target, "--topics", *topics],
        cwd=REPO_ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )

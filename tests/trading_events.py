"""Builders of complete input events for the trading-core tests (every schema field set)."""

from __future__ import annotations

from ticktape.serde import Serde

T0 = 1_704_205_800_000_000  # 2024-01-02T14:30:00Z
MIN = 60_000_000
SEC = 1_000_000

_serde = Serde()


def assert_schema(event_type: str, event: dict) -> None:
    """The event has exactly the schema's fields and encodes (round-trips) under it."""
    fields = [f["name"] for f in _serde.schemas.latest(event_type).schema["fields"]]
    assert sorted(event) == sorted(fields), (event_type, sorted(set(event) ^ set(fields)))
    assert _serde.decode(_serde.encode(event_type, event)) == (event_type, event)


def tick(symbol, ts, price=None, bid=None, ask=None, seq=0):
    return {
        "event_id": f"tick:{symbol}:{ts}:{seq}",
        "symbol": symbol,
        "ts": ts,
        "source": "test",
        "seq": seq,
        "price": price,
        "size": 1.0 if price is not None else None,
        "bid": bid,
        "ask": ask,
        "bid_size": None if bid is None else 100.0,
        "ask_size": None if ask is None else 100.0,
    }


def bar(symbol, ts, open_, close=None, interval="1m"):
    close = open_ if close is None else close
    return {
        "event_id": f"bar:{symbol}:{interval}:{ts}",
        "symbol": symbol,
        "interval": interval,
        "ts": ts,
        "window_start": ts - MIN,
        "window_end": ts,
        "open": open_,
        "high": max(open_, close),
        "low": min(open_, close),
        "close": close,
        "volume": 1000.0,
        "vwap": (open_ + close) / 2,
        "trade_count": 10,
    }


def prediction(symbol, ts, p_up, interval="1m", version="3", close=100.0, volatility=0.25):
    """A Prediction v2: the scored bar's close and volatility_20 ride along."""
    return {
        "event_id": f"pred:{symbol}:{interval}:{ts}:xgb:{version}",
        "symbol": symbol,
        "interval": interval,
        "ts": ts,
        "model_name": "xgb",
        "model_version": version,
        "p_up": p_up,
        "horizon": 5,
        "features": {"rsi_14": 55.0},
        "close": close,
        "volatility_20": volatility,
    }


def signal(symbol, ts, target, price, account="paper", n=0, committed=0.0):
    delta = target - committed
    return {
        "event_id": f"sig:{account}:{symbol}:{ts}:{n}",
        "account": account,
        "symbol": symbol,
        "ts": ts,
        "side": "BUY" if delta > 0 else "SELL",
        "quantity": abs(delta),
        "target_position": target,
        "reference_price": price,
        "strategy": "test",
        "reason": "test",
        "model_version": None,
    }


def fill(symbol, ts, side, qty, price, commission=0.0, account="paper", n=0):
    return {
        "event_id": f"fill:{symbol}:{ts}:{n}",
        "order_id": f"ord:{symbol}:{ts}:{n}",
        "account": account,
        "symbol": symbol,
        "ts": ts,
        "side": side,
        "quantity": qty,
        "price": price,
        "commission": commission,
        "slippage_bps": 0.0,
    }

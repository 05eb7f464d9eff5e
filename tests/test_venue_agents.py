"""EXECUTION_VENUE=alpaca-paper in a real worker on the real broker, against the local
Trading-API server (tests/alpaca_trading_server.py): the same positions as the internal
paper desk for the same fills, across a kill -9 with an order open at the venue; and a
venue rejection and a partial fill reaching the risk stage."""

from __future__ import annotations

import json
import signal

import pytest
from alpaca_trading_server import TradingServer
from test_trading_agents import ACCOUNT_P, PARTITION, output, per_partition, publish, wait_for, worker_env
from test_trading_desks import SYMBOLS, chain_args, streams
from test_worker import Worker

from ticktape import kafka_clients
from ticktape.core import desks
from ticktape.core.execution import ExecConfig
from ticktape.core.venue import client_order_id

pytestmark = pytest.mark.slow
PRICE = {sym: 100.0 + 40 * k for k, sym in enumerate(SYMBOLS)}  # about the streams' prices: no loss limit hit


def paper_chain(st):
    """The in-process chain with the internal desk, commission-free (as Alpaca's stocks)."""
    events = sorted(
        ((ev["ts"], kind, ev["symbol"], i), kind, ev) for (kind, _), evs in st.items() for i, ev in enumerate(evs)
    )
    args = chain_args() | {"exec_cfg": ExecConfig(slippage_bps=2.0, per_share=0.0, minimum=0.0)}
    return desks.run_trading_chain(((kind, ev) for _, kind, ev in events), **args).outputs


def venue_env(tmp_path, server) -> dict:
    return worker_env(tmp_path) | {
        "PROCESSOR_BATCH_SIZE": "20",
        "PROCESSOR_BATCH_MS": "20",
        "EXECUTION_VENUE": "alpaca-paper",
        "ALPACA_TRADING_URL": server.url,
        "ALPACA_API_KEY_ID": "test-key",
        "ALPACA_API_SECRET_KEY": "test-secret",
    }


def as_venue_fill(f: dict) -> dict:
    return f | {"slippage_bps": 0.0}  # the venue fills at the desk's price; Alpaca reports no slippage


def saved_open(s, symbol: str) -> list[str]:
    """Event ids of the orders the execution stage's saved state holds open for a symbol."""
    changelog = f"{s.group('worker')}-execution-changelog"
    last = None
    for m in kafka_clients.read_to_end(s, changelog, f"{s.topic_prefix}reader", idle_s=1.0):
        if json.loads(m.key()) == f"@venue:{symbol}":
            last = m.value()
    return [e["order"]["event_id"] for e in json.loads(last)["open"]] if last else []


@pytest.mark.parametrize("killed", ["with the order saved", "while the order is sent"])
def test_the_venue_gives_the_paper_desks_positions_across_a_kill_with_an_order_open(settings, tmp_path, killed):
    """Killed with the order saved: the restart reconciles it (GET, no resend).  Killed
    while its POST waits for the answer: nothing is saved, the order is read again and
    resent — refused as a duplicate, then found by its client order id."""
    kafka_clients.ensure_topics(settings)
    st = streams(40)
    want = paper_chain(st)
    assert len(want["order"]) > 10 and want["rejection"]
    by_cid = {client_order_id(f["order_id"]): f for f in want["fill"]}
    held_order = want["order"][len(want["order"]) // 2]
    held = client_order_id(held_order["event_id"])
    fill_of = {cid: ("fill", f["quantity"], f["price"], f["ts"]) for cid, f in by_cid.items()}
    stop = ("hold",) if killed == "with the order saved" else ("stall",)
    plan = lambda o: [stop] if o["client_order_id"] == held else [fill_of[o["client_order_id"]]]  # noqa: E731
    with TradingServer(plan=plan) as server:
        env = venue_env(tmp_path, server)
        publish(settings, st)
        first = Worker(settings, tmp_path / "worker1.log", **env)
        try:
            assert wait_for(lambda: held in server.orders, timeout=240), first.log_tail()
            if stop == ("hold",):
                sym = held_order["symbol"]
                assert wait_for(lambda: held_order["event_id"] in saved_open(settings, sym), timeout=120)
        finally:
            first.stop(signal.SIGKILL)
        # the held order fills while no one listens: its update is lost, the order's state tells
        assert wait_for(lambda: server.listening == 0, timeout=30)
        server.release()
        server.run(held, [fill_of[held]])
        assert server.orders[held]["status"] == "filled"
        second = Worker(settings, tmp_path / "worker2.log", **env)
        try:
            by_symbol = lambda e: PARTITION[e["symbol"]]  # noqa: E731
            got = output(settings, "trading.orders", len(want["order"]), timeout=240)
            assert got == per_partition(want["order"], by_symbol), second.log_tail()
            fills = output(settings, "trading.fills", len(want["fill"]), timeout=120)
            assert sorted(json.dumps(f) for fs in fills.values() for f in fs) == sorted(
                json.dumps(as_venue_fill(f)) for f in want["fill"]
            )
            for topic, kind in (("trading.positions", "position"), ("trading.equity", "equity")):
                assert output(settings, topic, len(want[kind]), timeout=120) == {ACCOUNT_P: want[kind]}, topic
        finally:
            assert second.stop() == 0, second.log_tail()
        # one order at the venue per approved order: the resend after the kill doubled none
        assert sum(p["client_order_id"] == held for p in server.posts) == (1 if stop == ("hold",) else 2)
        assert sorted(server.orders) == sorted(client_order_id(o["event_id"]) for o in want["order"])
        assert [u["order"]["client_order_id"] for u in server.updates if u["event"] == "fill"].count(held) == 1


def test_a_venue_rejection_and_a_partial_fill_reach_the_risk_stage(settings, tmp_path):
    kafka_clients.ensure_topics(settings)
    st = streams(40)
    seen: dict[str, list[str]] = {}  # per symbol, the client ids of its orders in arrival order

    def plan(o):
        """AAPL's first order refused; KO's first filled a third, the rest canceled; MSFT's
        first never answered (HTTP 503); the others filled whole.  Venue times at the
        epoch: each is stamped 1 µs after its order."""
        cids = seen.setdefault(o["symbol"], [])
        if o["client_order_id"] not in cids:
            cids.append(o["client_order_id"])
        first = cids[0] == o["client_order_id"]
        qty = float(o["qty"])
        if first and o["symbol"] == "AAPL":
            return [("refuse", 403, "insufficient buying power")]
        if first and o["symbol"] == "MSFT":
            return [("refuse", 503, "venue unavailable")]
        if first and o["symbol"] == "KO":
            return [("fill", qty // 3, PRICE["KO"], 0), ("cancel", 0)]
        return [("fill", qty, PRICE[o["symbol"]], 0)]

    with TradingServer(plan=plan) as server:
        worker = Worker(settings, tmp_path / "worker.log", **venue_env(tmp_path, server) | {"VENUE_TIMEOUT_S": "2"})
        try:
            publish(settings, st)
            assert wait_for(lambda: all(len(seen.get(sym, ())) >= 3 for sym in SYMBOLS), timeout=240), worker.log_tail()
            got = wait_for(lambda: settled(settings), timeout=240)
            assert got, worker.log_tail()
            orders, signals, rejected, fills = got
        finally:
            assert worker.stop() == 0, worker.log_tail()
    aapl = [o for o in orders if o["symbol"] == "AAPL"]
    ko = [o for o in orders if o["symbol"] == "KO"]
    msft = [o for o in orders if o["symbol"] == "MSFT"]
    a, k, m = aapl[0], ko[0], msft[0]
    venue_rej = {r["event_id"]: r for r in rejected if r["reason_code"].startswith("VENUE_")}
    assert venue_rej.pop(f"rej:{a['event_id']}") == {
        "event_id": f"rej:{a['event_id']}",
        "account": "paper",
        "symbol": "AAPL",
        "ts": a["ts"] + 1,
        "side": a["side"],
        "quantity": a["quantity"],
        "reference_price": a["reference_price"],
        "reason_code": "VENUE_REJECTED",
        "detail": "alpaca refused: HTTP 403: insufficient buying power",
        "signal_id": a["signal_id"],
    }
    part = k["quantity"] // 3
    n = lambda x: str(int(x)) if x == int(x) else repr(x)  # noqa: E731
    assert venue_rej.pop(f"rej:{k['event_id']}") == {
        "event_id": f"rej:{k['event_id']}",
        "account": "paper",
        "symbol": "KO",
        "ts": k["ts"] + 1,
        "side": k["side"],
        "quantity": k["quantity"] - part,
        "reference_price": k["reference_price"],
        "reason_code": "VENUE_CANCELED",
        "detail": f"alpaca canceled the order ({n(part)} of {n(k['quantity'])} filled): canceled",
        "signal_id": k["signal_id"],
    }
    assert venue_rej.pop(f"rej:{m['event_id']}") == {
        "event_id": f"rej:{m['event_id']}",
        "account": "paper",
        "symbol": "MSFT",
        "ts": m["ts"] + 1,
        "side": m["side"],
        "quantity": m["quantity"],
        "reference_price": m["reference_price"],
        "reason_code": "VENUE_UNANSWERED",
        "detail": "no answer from alpaca within VENUE_TIMEOUT_S=2: POST /v2/orders: HTTP 503 "
        '{"code": 50300000, "message": "venue unavailable"}',
        "signal_id": m["signal_id"],
    }
    assert venue_rej == {}
    [k_fill] = [f for f in fills if f["order_id"] == k["event_id"]]
    assert (k_fill["event_id"], k_fill["quantity"], k_fill["price"], k_fill["ts"]) == (
        f"fill:{k['event_id']}@{n(part)}",
        part,
        PRICE["KO"],
        k["ts"] + 1,
    )
    # the risk stage's committed position is what filled: the next order goes from there
    for first, filled, nxt in ((a, 0.0, aapl[1]), (m, 0.0, msft[1]), (k, part if k["side"] == "BUY" else -part, ko[1])):
        target = signals[nxt["signal_id"]]["target_position"]
        assert (nxt["side"], nxt["quantity"]) == ("BUY" if target > filled else "SELL", abs(target - filled)), first


def settled(s):
    """(orders, signals by id, rejections, fills) once every order's Fills and rejected
    rest make its quantity (nothing lost; a doubled fill would never settle); else None."""
    everything = lambda topic: [e for es in output(s, topic, 1).values() for e in es]  # noqa: E731
    orders = everything("trading.orders")
    fills, rejected = everything("trading.fills"), everything("trading.orders.rejected")
    for o in orders:
        done = sum(f["quantity"] for f in fills if f["order_id"] == o["event_id"])
        rest = sum(r["quantity"] for r in rejected if r["event_id"] == f"rej:{o['event_id']}")
        if done + rest != o["quantity"]:
            return None
    return orders, {e["event_id"]: e for e in everything("trading.signals")}, rejected, fills

"""`ticktape risk status|reset|halt`: the risk engine's live state, and the operator's switches.

``status`` reads the risk stage's table changelog (``<prefix>ticktape.worker-risk-changelog``,
the exact state the running worker restores from): trading state, halt reason, daily PnL,
committed positions and gross exposure, open orders, the events waiting for the ordering
barrier (and the symbols holding it), and the account's limits from the risk file.

``reset`` and ``halt`` (the kill switch by hand: HALTED, reason TRADING_HALTED) publish a
RiskControl event to ``trading.control`` (the account's partition); the running risk stage
applies it at its next batch and publishes the new state on ``trading.risk`` (Redis
``ticktape:risk:<account>``, table ``risk_states``).  An account already in the asked state
gets nothing; else the command waits (``--wait``) until the risk stage's saved state shows
it applied — exit 1 when no worker does within that time.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
import uuid
from typing import Any

from ..cli import UsageError
from ..config import settings

IDLE_S = 10.0  # a topic that delivers nothing for this long is read


def register(sub):
    p = sub.add_parser("risk", help="risk engine: live state, kill switch (halt, reset)")
    rsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    st = rsub.add_parser("status", help="trading state, exposures and limits of an account")
    st.add_argument("--account", help="account (default TRADING_ACCOUNT)")
    st.add_argument("--json", action="store_true", help="the state as JSON")
    st.set_defaults(func=run_status)
    rs = rsub.add_parser("reset", help="leave HALTED (kill switch): back to ACTIVE or REDUCING")
    rs.add_argument("--account", help="account (default TRADING_ACCOUNT)")
    rs.add_argument("--state", default="ACTIVE", type=_state, help="ACTIVE (default) or REDUCING")
    rs.set_defaults(func=run_reset)
    ht = rsub.add_parser("halt", help="kill switch by hand: HALTED (no new exposure) until `ticktape risk reset`")
    ht.add_argument("--account", help="account (default TRADING_ACCOUNT)")
    ht.set_defaults(func=run_reset, state="HALTED")
    for sp in (rs, ht):
        sp.add_argument(
            "--wait",
            type=float,
            default=30.0,
            help="seconds to wait until the risk stage has applied it (default 30; 0 = do not wait)",
        )


def _state(text: str) -> str:
    if text.upper() not in ("ACTIVE", "REDUCING"):
        raise UsageError(f"must be ACTIVE or REDUCING, got {text!r}")
    return text.upper()


def read_to_end(s, topic: str) -> list:
    """Every message of a topic, per partition in offset order ([] before it exists)."""
    from confluent_kafka import KafkaException

    from .. import kafka_clients

    try:
        return kafka_clients.read_to_end(s, topic, s.group("cli"), IDLE_S)
    except KeyError:
        return []
    except KafkaException as e:
        raise UsageError(f"{topic}: {e}") from None


def live_state(s, account: str) -> dict | None:
    """The risk stage's last saved state of an account (its table changelog), or None;
    its buffered events under ``"pending"``."""
    from stream_processors.risk import PENDING_KEY

    state: dict | None = None
    pending: dict[str, dict] = {}
    prefix = PENDING_KEY.format(account, "")
    for msg in read_to_end(s, f"{s.group('worker')}-risk-changelog"):
        key = json.loads(msg.key())
        if key == account:
            state = json.loads(msg.value()) if msg.value() else None
        elif isinstance(key, str) and key.startswith(prefix):
            if msg.value() is None:
                pending.pop(key, None)
            else:
                pending[key] = json.loads(msg.value())["e"]
    if state is not None:
        state["pending"] = list(pending.values())
    return state


def run_status(args) -> int:
    from ..core.desks import RiskDesk
    from ..risk_config import load_risk_limits, risk_config_path

    s = settings()
    account = args.account or s.trading_account
    limits = load_risk_limits(risk_config_path(s)).for_account(account)
    saved = live_state(s, account)
    if saved is None:
        print(f"account {account}: no risk state yet (the risk stage has seen no event of it)")
        _print_limits(limits)
        return 0
    desk = RiskDesk.from_dict(
        saved["desk"], limits, saved["desk"]["universe"], saved["pending"], idle_us=s.risk_idle_ms * 1000
    )
    r = desk.risk
    marks = r.portfolio.marks
    positions: dict[str, dict[str, Any]] = {
        sym: {"committed": q, "last_price": marks.get(sym), "notional": abs(q) * marks.get(sym, 0.0)}
        for sym, q in sorted(r.committed.items())
        if q
    }
    report: dict[str, Any] = {
        "account": account,
        "trading_state": r.trading_state,
        "halt_reason": r.halt_reason,
        "halt_detail": r.halt_detail,
        "as_of": desk.last_key[0] if desk.last_key else None,
        "equity": r.portfolio.equity,
        "day_start_equity": r.day_start_equity,
        "daily_pnl": r.daily_pnl,
        "gross_exposure": sum(p["notional"] for p in positions.values()),
        "positions": positions,
        "open_orders": sorted(desk.open_orders),
        "pending_events": len(desk.pending),
        "waiting_for": desk.waiting_for() if desk.pending else [],
        "idle": desk.idle(),
        "late": desk.late,
        "forced": desk.forced,
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    from ..core.trading import iso

    print(f"account {account}: {r.trading_state}" + (f" ({r.halt_reason}: {r.halt_detail})" if r.halt_reason else ""))
    if report["as_of"] is not None:
        print(f"  as of          {iso(report['as_of'])}")
    print(
        f"  equity         {r.portfolio.equity:,.2f}  (day start {r.day_start_equity:,.2f}, "
        f"daily PnL {r.daily_pnl:,.2f} of limit -{limits.daily_loss_limit:,.2f})"
    )
    print(f"  gross exposure {report['gross_exposure']:,.2f} of limit {limits.max_gross_exposure:,.2f}")
    for sym, p in positions.items():
        print(f"    {sym:<8} {p['committed']:>12,.2f} @ {p['last_price']:,.4f} = {p['notional']:,.2f}")
    print(
        f"  open orders    {len(desk.open_orders)};  events waiting {len(desk.pending)}"
        + (f" (for progress of {', '.join(report['waiting_for'][:10])})" if report["waiting_for"] else "")
    )
    if report["idle"]:
        print(
            f"  idle symbols   {', '.join(report['idle'][:10])} (more than RISK_IDLE_MS behind: they hold nothing back)"
        )
    print(
        f"  late input     signals {desk.late['signal']}, marks {desk.late['mark']}, fills {desk.late['fill']};"
        f"  processed past the buffer bound {desk.forced}"
    )
    _print_limits(limits)
    return 0


def _print_limits(limits) -> None:
    print(
        f"  limits         max gross exposure {limits.max_gross_exposure:,.0f}, daily loss "
        f"{limits.daily_loss_limit:,.0f}, orders {limits.max_orders_per_symbol}/symbol and "
        f"{limits.max_orders_total}/account per {limits.rate_window_s:g} s, stale after {limits.stale_after_s:g} s"
    )
    d = limits.symbol_defaults
    print(
        f"  per symbol     qty {d.max_position_qty:,.0f}, position notional {d.max_position_notional:,.0f}, "
        f"order notional {d.max_order_notional:,.0f}, collar {d.price_collar_pct:g}%"
    )
    for sym, lim in sorted(limits.symbols.items()):
        print(
            f"    {sym:<8} qty {lim.max_position_qty:,.0f}, position notional {lim.max_position_notional:,.0f}, "
            f"order notional {lim.max_order_notional:,.0f}, collar {lim.price_collar_pct:g}%"
        )


def trading_state(s, account: str) -> str | None:
    """The account's trading state as the risk stage last saved it (None: no state yet)."""
    from ..core.desks import RiskDesk
    from ..risk_config import load_risk_limits, risk_config_path

    saved = live_state(s, account)
    if saved is None:
        return None
    limits = load_risk_limits(risk_config_path(s)).for_account(account)
    return RiskDesk.from_dict(
        saved["desk"], limits, saved["desk"]["universe"], saved["pending"], idle_us=s.risk_idle_ms * 1000
    ).risk.trading_state


def run_reset(args) -> int:
    from .. import kafka_clients
    from ..core.desks import account_partition
    from ..serde import Serde

    s = settings()
    account = args.account or s.trading_account
    if args.wait < 0:
        raise UsageError(f"--wait must be 0 or more seconds, not {args.wait:g}")
    before = trading_state(s, account)
    if (before or "ACTIVE") == args.state:
        print(
            f"account {account}: already {args.state}" + ("" if before else " (no risk state yet)") + ": nothing sent"
        )
        return 0
    topic = s.topic("trading.control")
    kafka_clients.ensure_topics(s, ["trading.control"])
    ctl = {
        "event_id": f"ctl:{uuid.uuid4().hex}",
        "account": account,
        "ts": time.time_ns() // 1000,
        "state": args.state,
        "operator": f"{getpass.getuser()}@{socket.gethostname()}",
    }
    partitions = kafka_clients.topic_spec("trading.control").partitions
    prod = kafka_clients.producer(s)
    errors = []
    prod.produce(
        topic,
        key=account.encode(),
        value=Serde(s.schema_registry_url).encode("risk_control", ctl, topic=topic),
        partition=account_partition(account, partitions),
        on_delivery=lambda err, msg: errors.append(err) if err else None,
    )
    if prod.flush(30) or errors:
        raise UsageError(f"could not publish the reset to {topic}: {errors[0] if errors else 'timeout'}")
    what = "halt" if args.state == "HALTED" else f"reset to {args.state}"
    print(f"account {account}: {what} sent ({ctl['event_id']})", flush=True)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:  # the risk stage's saved state tells that a worker applied it
        if trading_state(s, account) == args.state:
            print(f"account {account}: {args.state} (applied by the risk stage)")
            return 0
        time.sleep(0.5)
    raise SystemExit(
        f"ticktape: risk: account {account} is not {args.state} after {args.wait:g} s: no worker runs "
        f"the risk stage? (ticktape run, or ticktape process worker); the {what} waits in {topic} "
        "and applies when one starts"
    )

"""The simulator: deterministic, realistic enough, and its CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from ticktape.config import DEFAULT_SYMBOLS
from ticktape.core.sim import MarketSimulator, volume_profile

START = 1_795_183_200_000_000  # 2026-11-20 14:00 UTC, inside the US session


def take(sim, n):
    out = []
    while len(out) < n:
        out.extend(sim.next_chunk())
    return out[:n]


def test_same_seed_same_ticks_different_seed_different_ticks():
    a = take(MarketSimulator(DEFAULT_SYMBOLS, seed=7, tick_rate=1000, start_us=START), 10_000)
    b = take(MarketSimulator(DEFAULT_SYMBOLS, seed=7, tick_rate=1000, start_us=START), 10_000)
    c = take(MarketSimulator(DEFAULT_SYMBOLS, seed=8, tick_rate=1000, start_us=START), 10_000)
    assert a == b
    assert [t["price"] for t in a] != [t["price"] for t in c]


def test_ticks_are_ordered_well_formed_and_unique():
    ticks = take(MarketSimulator(DEFAULT_SYMBOLS, seed=1, tick_rate=2000, start_us=START), 20_000)
    assert [t["ts"] for t in ticks] == [START + 500 * (i + 1) for i in range(20_000)]
    assert len({t["event_id"] for t in ticks}) == 20_000
    assert {t["symbol"] for t in ticks} == set(DEFAULT_SYMBOLS)
    per_symbol_seq = {}
    for t in ticks:
        assert t["bid"] < t["price"] < t["ask"]
        assert t["size"] > 0 and t["size"] % 100 == 0
        assert t["price"] == round(t["price"], 2)
        per_symbol_seq.setdefault(t["symbol"], []).append(t["seq"])
    for seqs in per_symbol_seq.values():
        assert seqs == list(range(1, len(seqs) + 1))


def test_prices_are_correlated_through_the_market_factor():
    sim = MarketSimulator(["A", "B"], seed=3, tick_rate=100, start_us=START)
    ticks = take(sim, 40_000)
    # log returns of each symbol sampled every 200 steps (both trade often with 2 symbols)
    last = {}
    series = {"A": [], "B": []}
    for i, t in enumerate(ticks):
        last[t["symbol"]] = t["price"]
        if i % 200 == 199 and len(last) == 2:
            for s in series:
                series[s].append(math.log(last[s]))
    ra, rb = np.diff(series["A"]), np.diff(series["B"])
    assert np.corrcoef(ra, rb)[0, 1] > 0.3


def test_volume_profile_is_u_shaped_over_the_session():
    open_, mid, close, night = volume_profile(np.array([13.5 * 3600, 16.75 * 3600, 20 * 3600 - 1, 3 * 3600]))
    assert open_ > close > mid > night


@pytest.mark.parametrize("symbols, rate", [([], 10), (["A"], 0)])
def test_bad_parameters_are_refused(symbols, rate):
    with pytest.raises(ValueError):
        MarketSimulator(symbols, seed=1, tick_rate=rate, start_us=START)


def test_produce_sim_publishes_exactly_the_simulated_ticks(settings):
    from ticktape import kafka_clients
    from ticktape.serde import Serde

    kafka_clients.ensure_topics(settings, ["md.ticks"])
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "TOPIC_PREFIX": settings.topic_prefix,
        "TICKTAPE_HOME": settings.home,
        "METRICS_PORT": str(settings.metrics_port),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ticktape.cli",
            "produce",
            "sim",
            "--symbols",
            "AAPL,MSFT,NVDA",
            "--seed",
            "5",
            "--rate",
            "1000",
            "--start",
            "2026-11-20T14:00:00Z",
            "--speed",
            "max",
            "--count",
            "3000",
        ],
        check=True,
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
    )
    # simulated history says how far it is (the last line: the total)
    assert [line for line in done.stderr.splitlines() if line.startswith("sim: ")][-1].startswith(
        "sim: 3,000 events  "
    ), done.stderr
    consumer = kafka_clients.consumer(settings, group=settings.group("check"))
    consumer.subscribe([settings.topic("md.ticks")])
    serde, got = Serde(), []
    idle = 0
    while idle < 10:
        msg = consumer.poll(0.5)
        if msg is None:
            idle += 1
            continue
        idle = 0
        _, tick = serde.decode(msg.value())
        assert msg.key().decode() == tick["symbol"]
        got.append(tick)
    consumer.close()
    expected = take(MarketSimulator(["AAPL", "MSFT", "NVDA"], seed=5, tick_rate=1000, start_us=START), 3000)
    assert sorted(got, key=lambda t: t["ts"]) == expected


def test_produce_sim_rejects_bad_arguments():
    res = subprocess.run(
        [sys.executable, "-m", "ticktape.cli", "produce", "sim", "--rate", "fast"], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "--rate" in res.stderr

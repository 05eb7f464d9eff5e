"""`ticktape replay` on the real broker and database: the exact time range (by event
time, whatever the record timestamps), partitions and order kept, the symbol filter,
--to-topic, CSV and database sources, pacing, and one-line errors."""

from __future__ import annotations

import csv
import time
from collections import defaultdict

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from ticktape import kafka_clients
from ticktape.cli import main
from ticktape.core.replay import PartitionMerger, partition_for
from ticktape.core.sim import MarketSimulator
from ticktape.core.trading import iso
from ticktape.serde import Serde

T0 = 1_704_205_800_000_000  # 2024-01-02T14:30:00Z
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "BRK-B", "JPM", "XOM", "KO"]
serde = Serde()


def sim_ticks(n: int, rate: float = 200.0) -> list[dict]:
    sim = MarketSimulator(SYMBOLS, seed=7, tick_rate=rate, start_us=T0)
    out = []
    while len(out) < n:
        out.extend(sim.next_chunk())
    return out[:n]


def produce_ticks(s, topic: str, ticks: list[dict]) -> None:
    """With the default partitioner and record time = now (not the event time)."""
    prod = kafka_clients.producer(s)
    for t in ticks:
        prod.produce(topic, value=serde.encode("tick", t), key=t["symbol"])
    assert prod.flush(30) == 0


def read_all(s, topic: str, idle: float = 1.5) -> dict[int, list]:
    """Every message of a topic by partition, in offset order."""
    parts = kafka_clients.topic_metadata(s, topic).partitions
    cons = kafka_clients.consumer(s, f"{s.topic_prefix}check")
    cons.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out = defaultdict(list)
    last = time.monotonic()
    while time.monotonic() - last < idle:
        for msg in cons.consume(1000, 0.2):
            assert msg.error() is None, msg.error()
            out[msg.partition()].append(msg)
            last = time.monotonic()
    cons.close()
    return out


def env(monkeypatch, s, **extra):
    for k, v in {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "TOPIC_PREFIX": s.topic_prefix,
        "TICKTAPE_HOME": s.home,
        "DATABASE_URL": s.database_url,
        **extra,
    }.items():
        monkeypatch.setenv(k, v)


def by_partition(ticks, partitions=6):
    out = defaultdict(list)
    for t in ticks:
        out[partition_for(t["symbol"], partitions)].append(t)
    return out


def decoded(msgs):
    return [serde.decode(m.value())[1] for m in msgs]


def test_partition_for_is_the_producers_default_partitioner(settings):
    kafka_clients.ensure_topics(settings, ["md.ticks"])
    ticks = sim_ticks(300)
    produce_ticks(settings, settings.topic("md.ticks"), ticks)
    got = read_all(settings, settings.topic("md.ticks"))
    assert {p: decoded(m) for p, m in got.items()} == by_partition(ticks)


def test_merger_orders_by_time_and_keeps_partition_order():
    m = PartitionMerger([0, 1])
    m.add(0, 10, "a")
    m.add(0, 5, "b")  # out of order within its partition: stays after "a"
    assert m.ready() == []  # partition 1 might still bring something earlier
    m.add(1, 7, "c")
    assert [x[2] for x in m.ready()] == ["c"]  # 7 < 10; then 0's head (10) waits for 1
    m.seen(1, 12)
    assert [x[2] for x in m.ready()] == ["a", "b"]
    m.add(1, 20, "d")
    m.finish(0)
    assert [x[2] for x in m.ready()] == ["d"]
    assert m.drain() == []


def test_topic_range_is_exact_by_event_time_with_partitions_and_order_kept(settings, monkeypatch, capsys):
    src = settings.topic("md.ticks")
    kafka_clients.ensure_topics(settings, ["md.ticks"])
    ticks = sim_ticks(1200)  # 6 s of event time
    produce_ticks(settings, src, ticks)
    start, end = ticks[200]["ts"], ticks[900]["ts"]
    target = f"{settings.topic_prefix}out.md.ticks"
    env(monkeypatch, settings)
    assert (
        main(["replay", "--topic", src, "--from", iso(start), "--to", iso(end), "--to-topic", target, "--quiet"]) == 0
    )
    assert capsys.readouterr().out.strip() == f"replayed 701 events to {target}"
    got = read_all(settings, target)
    expected = by_partition(ticks[200:901])
    assert {p: decoded(m) for p, m in got.items()} == expected  # same partition, same order
    source = read_all(settings, src)
    src_ts = {m.value(): m.timestamp() for msgs in source.values() for m in msgs}
    for msgs in got.values():  # bytes and record timestamps as they were
        for m in msgs:
            assert src_ts[m.value()] == m.timestamp()
    # the symbol filter
    target2 = f"{settings.topic_prefix}aapl.md.ticks"
    assert (
        main(
            [
                "replay",
                "--topic",
                src,
                "--from",
                iso(start),
                "--to",
                iso(end),
                "--symbols",
                "AAPL,KO",
                "--to-topic",
                target2,
                "--quiet",
            ]
        )
        == 0
    )
    got2 = read_all(settings, target2)
    want2 = by_partition([t for t in ticks[200:901] if t["symbol"] in ("AAPL", "KO")])
    assert {p: decoded(m) for p, m in got2.items()} == want2 and sum(map(len, want2.values())) > 50


def test_a_partition_ends_at_its_first_event_after_the_range(settings, monkeypatch):
    src = settings.topic("md.ticks")
    kafka_clients.ensure_topics(settings, ["md.ticks"])
    p = partition_for("AAPL", 6)
    ts = [T0, T0 + 10, T0 + 30, T0 + 20, T0 + 5]  # T0+20 and T0+5 arrive after T0+30
    ticks = [
        {
            "event_id": f"e{i}",
            "symbol": "AAPL",
            "ts": t,
            "source": "t",
            "seq": i,
            "price": 1.0,
            "size": 1.0,
            "bid": None,
            "ask": None,
            "bid_size": None,
            "ask_size": None,
        }
        for i, t in enumerate(ts)
    ]
    produce_ticks(settings, src, ticks)
    env(monkeypatch, settings, TOPIC_PREFIX=settings.topic_prefix + "r.")
    assert main(["replay", "--topic", src, "--from", iso(T0 + 5), "--to", iso(T0 + 25), "--quiet"]) == 0
    got = read_all(settings, settings.topic_prefix + "r.md.ticks")
    # T0 is before the range; T0+30 ends the partition, so T0+20 and T0+5 after it are not read
    assert {q: [e["event_id"] for e in decoded(m)] for q, m in got.items()} == {p: ["e1"]}


def test_csv_sources_ticks_and_bars(settings, monkeypatch, tmp_path):
    ticks = sim_ticks(400)
    path = tmp_path / "ticks.csv"
    fields = list(ticks[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for t in ticks:
            w.writerow({k: ("" if v is None else (iso(v) if k == "ts" else v)) for k, v in t.items()})
    env(monkeypatch, settings, TOPIC_PREFIX=settings.topic_prefix + "csv.")
    assert main(["replay", "--source", "csv", "--input", str(path), "--to", iso(ticks[299]["ts"]), "--quiet"]) == 0
    got = read_all(settings, settings.topic_prefix + "csv.md.ticks")
    assert {p: decoded(m) for p, m in got.items()} == by_partition(ticks[:300])
    for msgs in got.values():  # record time = event time
        assert [m.timestamp()[1] for m in msgs] == [serde.decode(m.value())[1]["ts"] // 1000 for m in msgs]

    bars = tmp_path / "bars.csv"
    bars.write_text(
        "time,symbol,open,high,low,close,volume\n"
        "2024-01-02T14:30:00,AAPL,10,11,9,10.5,100\n"
        "2024-01-02T14:30:00,MSFT,20,21,19,20.5,200\n"
        "2024-01-02T14:31:00,AAPL,10.5,12,10,11,300\n"
    )
    assert main(["replay", "--source", "csv", "--input", str(bars), "--symbols", "AAPL", "--quiet"]) == 0
    got = read_all(settings, settings.topic_prefix + "csv.md.bars.1m")
    events = [e for msgs in got.values() for e in decoded(msgs)]
    assert [(e["event_id"], e["ts"], e["close"], e["vwap"]) for e in events] == [
        (f"AAPL:1m:{T0}", T0 + 60_000_000, 10.5, 10.166666666666666),
        (f"AAPL:1m:{T0 + 60_000_000}", T0 + 120_000_000, 11.0, 11.0),
    ]
    assert list(got) == [partition_for("AAPL", 6)]


def test_db_source_and_pace(settings, monkeypatch, fresh_db):
    from dataclasses import replace

    import psycopg

    from sinks import postgres, schema
    from sinks.tables import TABLES

    s = replace(settings, database_url=fresh_db)
    schema.migrate(s)
    ticks = sim_ticks(600, rate=400.0)  # 1.5 s of event time
    with psycopg.connect(fresh_db) as conn, conn.cursor() as cur:
        # stored in another order than time order: the replay orders by (ts, event_id)
        postgres.TableWriter(conn, TABLES["tick"]).write(cur, [TABLES["tick"].row(t) for t in reversed(ticks)])
    env(monkeypatch, s, TOPIC_PREFIX=settings.topic_prefix + "db.")
    start = time.monotonic()
    assert (
        main(
            [
                "replay",
                "--source",
                "db",
                "--from",
                iso(ticks[0]["ts"]),
                "--to",
                iso(ticks[-1]["ts"]),
                "--speed",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    elapsed = time.monotonic() - start
    span = (ticks[-1]["ts"] - ticks[0]["ts"]) / 1e6
    assert elapsed >= span / 2 * 0.95  # paced at 2x: never faster (no upper bound: machines vary)
    got = read_all(settings, settings.topic_prefix + "db.md.ticks")
    assert {p: decoded(m) for p, m in got.items()} == by_partition(ticks)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["replay", "--topic", "md.ticks", "--from", "yesterday"],
            "argument --from: not an ISO-8601 time: 'yesterday'",
        ),
        (
            ["replay", "--topic", "md.ticks", "--speed", "0"],
            "argument --speed: speed must be a positive number or 'max', not '0'",
        ),
        (["replay", "--source", "csv"], "--source csv needs --input FILE"),
        (
            ["replay", "--topic", "md.ticks", "--from", "2024-01-02T15:00", "--to", "2024-01-02T14:00"],
            "--to is before --from",
        ),
        (
            ["replay", "--source", "csv", "--input", "/nonexistent.csv"],
            "cannot read /nonexistent.csv: No such file or directory",
        ),
    ],
)
def test_bad_arguments_are_one_line_exit_2(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TICKTAPE_HOME", str(tmp_path))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's type errors exit while parsing
        code = e.code
    assert code == 2
    assert capsys.readouterr().err == f"ticktape: error: {message}\n"


def test_bad_csv_row_names_its_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TICKTAPE_HOME", str(tmp_path))
    path = tmp_path / "t.csv"
    path.write_text("symbol,ts,price,size\nAAPL,2024-01-02T14:30:00,10,100\nAAPL,2024-01-02T14:30:01,ten,100\n")
    assert main(["replay", "--source", "csv", "--input", str(path)]) == 2
    assert capsys.readouterr().err == f"ticktape: error: {path} line 3: price is not a number: 'ten'\n"

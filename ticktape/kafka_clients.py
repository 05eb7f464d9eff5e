"""Kafka clients built from settings, and the topic catalog (``kafka/topics.yaml``).

Security settings (SASL/SSL) pass through to every client: confluent-kafka producers,
consumers and admin, and the Faust app (aiokafka).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from .config import REPO_ROOT, ConfigError, Settings

log = logging.getLogger(__name__)
CATALOG_FILE = REPO_ROOT / "kafka" / "topics.yaml"


def client_config(s: Settings) -> dict:
    """Connection and security settings shared by every confluent-kafka client."""
    if not s.kafka_bootstrap_servers:
        raise ConfigError("no Kafka: set KAFKA_BOOTSTRAP_SERVERS or run `ticktape stack up`")
    conf = {"bootstrap.servers": s.kafka_bootstrap_servers, "security.protocol": s.kafka_security_protocol}
    if s.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = s.kafka_sasl_mechanism
        conf["sasl.username"] = s.kafka_sasl_username
        conf["sasl.password"] = s.kafka_sasl_password
    if s.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = s.kafka_ssl_ca_location
    return conf


def quiet_logger() -> logging.Logger:
    """A logger for librdkafka's own log lines where a command's one answer says it all."""
    quiet = logging.getLogger("ticktape.kafka_quiet")
    if not quiet.handlers:
        quiet.propagate = False
        quiet.addHandler(logging.NullHandler())
    return quiet


def check_reachable(s: Settings, timeout: float = 5.0) -> Settings:
    """``s`` when its Kafka answers a metadata request within ``timeout`` seconds; else a
    ConfigError line naming the servers and why (librdkafka's own log lines of the probe
    are not printed: the one line says it all)."""
    import socket

    where = f"Kafka at {s.kafka_bootstrap_servers or '?'} (KAFKA_BOOTSTRAP_SERVERS)"
    refusals = []
    for server in client_config(s)["bootstrap.servers"].split(","):
        host, _, port = server.strip().rpartition("://")[2].rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
            break
        except (OSError, ValueError) as e:
            refusals.append(f"{server.strip()}: {getattr(e, 'strerror', None) or e}")
    else:
        raise ConfigError(f"{where} cannot be reached: {'; '.join(refusals)}")
    try:
        AdminClient(client_config(s) | {"logger": quiet_logger()}).list_topics(timeout=timeout)
    except KafkaException as e:
        raise ConfigError(
            f"{where} did not answer within {timeout:g} s ({e.args[0].str()}); "
            f"check KAFKA_SECURITY_PROTOCOL and the SASL/SSL settings"
        ) from None
    return s


def producer(s: Settings, **overrides) -> Producer:
    conf = client_config(s) | {
        "enable.idempotence": True,  # no duplicates from producer retries
        "linger.ms": s.kafka_linger_ms,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    }
    conf.update(overrides)
    return Producer(conf)


def consumer(s: Settings, group: str, **overrides) -> Consumer:
    conf = client_config(s) | {
        "group.id": group,
        "enable.auto.commit": False,  # offsets are committed after the work is durable
        "auto.offset.reset": "earliest",
        "session.timeout.ms": s.kafka_session_timeout_ms,
        "heartbeat.interval.ms": max(500, s.kafka_session_timeout_ms // 6),
        "fetch.queue.backoff.ms": 10,  # else the consumer stalls ~1 s when its queue drains
        "fetch.wait.max.ms": s.kafka_fetch_max_wait_ms,
        "isolation.level": "read_committed",
    }
    conf.update(overrides)
    return Consumer(conf)


def admin(s: Settings) -> AdminClient:
    return AdminClient(client_config(s))


def faust_broker_settings(s: Settings) -> dict:
    """Keyword arguments for ``faust.App`` carrying the same connection and security."""
    import ssl

    import faust

    if not s.kafka_bootstrap_servers:
        raise ConfigError("no Kafka: set KAFKA_BOOTSTRAP_SERVERS or run `ticktape stack up`")
    kwargs: dict[str, Any] = {"broker": ";".join(f"kafka://{h}" for h in s.kafka_bootstrap_servers.split(","))}
    proto = s.kafka_security_protocol.upper()
    ctx = None
    if proto in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(cafile=s.kafka_ssl_ca_location or None)
    if proto.startswith("SASL"):
        kwargs["broker_credentials"] = faust.SASLCredentials(
            username=s.kafka_sasl_username,
            password=s.kafka_sasl_password,
            mechanism=s.kafka_sasl_mechanism or "PLAIN",
            ssl_context=ctx,
        )
    elif ctx is not None:
        kwargs["broker_credentials"] = faust.SSLCredentials(ctx)
    return kwargs


def faust_fetch_max_wait(app, ms: int) -> None:
    """Give ``app``'s worker consumer a fetch wait of ``ms``.  Faust's Kafka driver fixes
    it at 1.5 s: harmless on Apache Kafka, which answers a waiting fetch as soon as data
    arrives, but the local broker answers only when the wait is over, so every hop of the
    pipeline would add up to 1.5 s of latency."""
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    if not getattr(thread, "_fetch_wait_hooked", False):
        create = thread._create_worker_consumer

        def create_worker_consumer(self, transport):
            consumer = create(self, transport)
            wait = getattr(self.app, "fetch_max_wait_ms", None)
            if wait is not None:
                consumer._fetch_max_wait_ms = wait  # read when the consumer starts its fetcher
            return consumer

        thread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
        thread._fetch_wait_hooked = True  # type: ignore[attr-defined]
    app.fetch_max_wait_ms = ms


# --- the topic catalog -------------------------------------------------------------
@dataclass(frozen=True)
class TopicSpec:
    name: str  # catalog name, without prefix
    event: str | None  # schemas/<event>.vN.avsc; None for raw topics (DLQ, model announcements)
    partitions: int
    replication_factor: int
    retention_ms: int
    cleanup_policy: str

    def configs(self) -> dict[str, str]:
        # Always explicit: some brokers report no configs for a topic created without them.
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


def topic_catalog(s: Settings | None = None) -> dict[str, TopicSpec]:
    """The catalog with TOPIC_PARTITIONS (of ``s``, else of the environment) applied:
    it replaces the default count, so the symbol-keyed topics stay co-partitioned."""
    if s is None:
        from .config import settings

        s = settings()
    return _catalog(s.topic_partitions)


@lru_cache(maxsize=4)
def _catalog(partitions: int) -> dict[str, TopicSpec]:
    doc = yaml.safe_load(CATALOG_FILE.read_text())
    defaults = doc.get("defaults", {}) | ({"partitions": partitions} if partitions > 0 else {})
    out = {}
    for name, spec in doc["topics"].items():
        merged = defaults | (spec or {})
        out[name] = TopicSpec(
            name=name,
            event=merged.get("event"),
            partitions=int(merged["partitions"]),
            replication_factor=int(merged["replication_factor"]),
            retention_ms=int(merged["retention_ms"]),
            cleanup_policy=merged["cleanup_policy"],
        )
    return out


def topic_spec(name: str, s: Settings | None = None) -> TopicSpec:
    """The catalog entry of a topic name with or without the run prefix."""
    cat = topic_catalog(s)
    if name in cat:
        return cat[name]
    for base, spec in cat.items():
        if name.endswith("." + base) or name.endswith(base) and name[: -len(base)].endswith("."):
            return spec
    raise KeyError(f"{name} is not in {CATALOG_FILE.relative_to(REPO_ROOT)}")


def ensure_topics(s: Settings, names: list[str] | None = None, *, extra: Sequence[TopicSpec] = ()) -> list[str]:
    """Create missing catalog topics (with the run prefix); returns the names created."""
    cat = topic_catalog(s)
    specs = [cat[n] for n in (names or list(cat))] + list(extra)
    adm = admin(s)
    existing = set(adm.list_topics(timeout=10).topics)
    new = [
        NewTopic(
            s.topic(sp.name),
            num_partitions=sp.partitions,
            replication_factor=sp.replication_factor,
            config=sp.configs(),
        )
        for sp in specs
        if s.topic(sp.name) not in existing
    ]
    created = []
    for name, fut in adm.create_topics(new, operation_timeout=10).items() if new else []:
        try:
            fut.result()
            created.append(name)
        except KafkaException as e:
            if e.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return created


def delete_topics(s: Settings, names: list[str]) -> None:
    adm = admin(s)
    for fut in adm.delete_topics(names, operation_timeout=10).values():
        try:
            fut.result()
        except KafkaException as e:
            if e.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise


def topic_metadata(s: Settings, name: str, adm: AdminClient | None = None):
    """Metadata of an existing topic; KeyError when it does not exist.

    Lists all topics rather than asking for one by name: a metadata request naming a
    topic makes some brokers auto-create it (without configs)."""
    md = (adm or admin(s)).list_topics(timeout=10).topics.get(name)
    if md is None or md.error is not None:
        raise KeyError(f"topic {name} does not exist")
    return md


def describe_topic(s: Settings, name: str) -> dict:
    """A topic's partitions with their offsets (low, high; span = their sum of high - low) and
    every config the broker reports."""
    adm = AdminClient(client_config(s) | {"logger": quiet_logger()})
    md = topic_metadata(s, name, adm)
    configs = {}
    try:
        res = adm.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)])
        for fut in res.values():
            configs = {k: v.value for k, v in sorted(fut.result().items())}
    except KafkaException as e:  # some brokers answer describe_configs partially
        log.debug("describe_configs %s: %s", name, e)
    offsets = watermarks(s, {name: sorted(md.partitions)})[name]
    return {
        "topic": name,
        "partitions": len(md.partitions),
        "span": sum(h - lo for lo, h in offsets.values()),
        "offsets": [{"partition": p, "low": lo, "high": h} for p, (lo, h) in sorted(offsets.items())],
        "configs": configs,
    }


def watermarks(
    s: Settings, topics: dict[str, list[int]], timeout: float = 10.0
) -> dict[str, dict[int, tuple[int, int]]]:
    """(low, high) offsets of each partition of ``topics`` (topic -> partitions)."""
    from confluent_kafka import TopicPartition

    probe = consumer(s, s.group("cli"), logger=quiet_logger())  # never subscribes: joins no group
    try:
        return {
            topic: {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in parts}
            for topic, parts in topics.items()
        }
    finally:
        probe.close()


def read_to_end(s: Settings, topic: str, group: str, idle_s: float = 5.0) -> list:
    """Every message of an existing topic, per partition in offset order.

    Each partition ends at its end-of-partition event (not at the high watermark, which
    some brokers report short), or the read ends after ``idle_s`` without data.
    KeyError when the topic does not exist; KafkaException on a consumer error."""
    import time

    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    md = topic_metadata(s, topic)
    cons = consumer(s, group, **{"enable.partition.eof": True})
    cons.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
    pending, out = set(md.partitions), []
    idle_since = time.monotonic()
    try:
        while pending and time.monotonic() - idle_since < idle_s:
            msg = cons.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise KafkaException(err)
            idle_since = time.monotonic()
            out.append(msg)
    finally:
        cons.close()
    return out

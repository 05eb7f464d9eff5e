"""The model registry: files, the ``models`` table, and activation announcements.

A registered model is
* files ``$TICKTAPE_HOME/models/<name>/<version>/model.ubj`` + ``metadata.json``;
* a row of the ``models`` table (sinks/migrations/0003_models.sql) holding the
  metadata and the artifact bytes, so another machine can load it.

At most one model is active.  ``activate`` checks the model against this pipeline's
features first (``Model.load``), flips the ``active`` flag and, inside that database
transaction, announces the model on the compacted ``ml.models`` topic: key ``active``,
value a JSON object ``{"name", "version", "metadata", "artifact"}`` with the artifact
base64-encoded.  Compaction keeps the latest announcement, so every predict worker —
on any machine, it needs only Kafka — reads the topic from the start and ends on the
active model, and picks up later activations while it runs.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from . import kafka_clients
from .config import ConfigError, Settings
from .core.ml import Model, Trained

MODELS_TOPIC = "ml.models"
ANNOUNCE_KEY = b"active"
ARTIFACT_FILE = "model.ubj"
METADATA_FILE = "metadata.json"
MAX_ANNOUNCEMENT_BYTES = 900_000  # under Kafka's default 1 MB message limit
_LOCK_KEY = 0x6D6F646C  # "modl": serialises activations


class RegistryError(ValueError):
    """A registry request that cannot be served (unknown version, too large, ...)."""


def _url(s: Settings) -> str:
    if not s.database_url:
        raise ConfigError("no database: set DATABASE_URL or run `ticktape stack up`")
    return s.database_url


def model_dir(s: Settings, name: str, version: str) -> Path:
    return Path(s.home) / "models" / name / version


def metadata_json(metadata: dict) -> bytes:
    return (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode()


def save_files(s: Settings, trained: Trained) -> Path:
    """Write the artifact and metadata; atomic (a directory renamed into place)."""
    meta = trained.metadata
    target = model_dir(s, meta["name"], meta["version"])
    if (target / METADATA_FILE).exists():
        return target  # same version = same content
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{meta['version']}.", dir=target.parent))
    try:
        (tmp / ARTIFACT_FILE).write_bytes(trained.artifact)
        (tmp / METADATA_FILE).write_bytes(metadata_json(meta))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def register(s: Settings, trained: Trained) -> tuple[Path, bool]:
    """Files + table row; (directory, True when the version is new to the table)."""
    from sinks import schema

    path = save_files(s, trained)
    schema.migrate(s)  # the models table exists wherever a model is registered
    meta = trained.metadata
    with psycopg.connect(_url(s)) as conn:
        cur = conn.execute(
            "INSERT INTO models (name, version, interval, horizon, features, metrics, metadata, artifact, "
            "artifact_sha256) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (
                meta["name"],
                meta["version"],
                meta["interval"],
                meta["horizon"],
                Jsonb(meta["features"]),
                Jsonb(meta["metrics"]),
                Jsonb(meta),
                trained.artifact,
                meta["artifact"]["sha256"],
            ),
        )
        return path, cur.rowcount == 1


_COLUMNS = "name, version, registered_at, interval, horizon, metrics, active, activated_at"


def list_models(s: Settings) -> list[dict]:
    with psycopg.connect(_url(s)) as conn:
        cur = conn.execute(f"SELECT {_COLUMNS} FROM models ORDER BY registered_at, name, version")
        return [dict(zip(_COLUMNS.split(", "), row)) for row in cur]


def _find(conn: psycopg.Connection, version: str) -> tuple[dict, bytes, bool]:
    """(metadata, artifact, active) of a version or a unique prefix of one."""
    if not version or not all(c in "0123456789abcdef" for c in version):
        raise RegistryError(f"bad model version {version!r}: expected hex digits (see `ticktape models list`)")
    rows = conn.execute(
        "SELECT metadata, artifact, active FROM models WHERE version LIKE %s ORDER BY name", (version + "%",)
    ).fetchall()
    if not rows:
        raise RegistryError(f"no model version {version} in the registry (see `ticktape models list`)")
    if len(rows) > 1:
        found = ", ".join(f"{r[0]['name']} {r[0]['version']}" for r in rows)
        raise RegistryError(f"model version {version} is ambiguous: {found}")
    meta, artifact, active = rows[0]
    return meta, bytes(artifact), active


def get(s: Settings, version: str) -> tuple[dict, bytes, bool]:
    with psycopg.connect(_url(s)) as conn:
        return _find(conn, version)


def announcement(metadata: dict, artifact: bytes) -> bytes:
    return json.dumps(
        {
            "name": metadata["name"],
            "version": metadata["version"],
            "metadata": metadata,
            "artifact": base64.b64encode(artifact).decode(),
        },
        sort_keys=True,
    ).encode()


def parse_announcement(value: bytes) -> tuple[dict, bytes]:
    """(metadata, artifact) of an ml.models message; ValueError when it is not one."""
    try:
        doc = json.loads(value)
        return doc["metadata"], base64.b64decode(doc["artifact"], validate=True)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a model announcement ({type(e).__name__}: {e})") from None


def announce(s: Settings, metadata: dict, artifact: bytes) -> None:
    """Publish the active model on ml.models and wait until the broker has it."""
    value = announcement(metadata, artifact)
    if len(value) > MAX_ANNOUNCEMENT_BYTES:
        raise RegistryError(
            f"model {metadata['version']} is too large to announce ({len(value):,} bytes, "
            f"limit {MAX_ANNOUNCEMENT_BYTES:,}): train fewer or shallower trees"
        )
    kafka_clients.ensure_topics(s, [MODELS_TOPIC])
    producer = kafka_clients.producer(s)
    errors = []
    producer.produce(
        s.topic(MODELS_TOPIC),
        key=ANNOUNCE_KEY,
        value=value,
        on_delivery=lambda err, msg: errors.append(err) if err else None,
    )
    if producer.flush(30) != 0 or errors:
        raise RegistryError(
            f"could not announce model {metadata['version']} on "
            f"{s.topic(MODELS_TOPIC)}: {errors[0] if errors else 'timed out'}"
        )


def activate(s: Settings, version: str) -> dict:
    """Make a registered model the active one; returns its metadata.

    ``ModelMismatch`` (nothing changed) when this pipeline cannot score with it (its
    user indicators included: ``INDICATORS``)."""
    from .api import load_indicators

    indicators = load_indicators(s)
    with psycopg.connect(_url(s)) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        meta, artifact, _ = _find(conn, version)
        Model.load(artifact, meta, indicators)  # refuse before anything changes
        conn.execute("UPDATE models SET active = false WHERE active")
        conn.execute(
            "UPDATE models SET active = true, activated_at = now() WHERE name = %s AND version = %s",
            (meta["name"], meta["version"]),
        )
        announce(s, meta, artifact)  # a failure rolls the flag back
    return meta

"""The one rule for dead letters: every stage and sink builds its dead-letter records here.

A dead letter carries the failing message's key and value and, in its headers, where it
came from and why it failed:

==============================  ==================================================
``ticktape.error``              the reason (at most ``MAX_REASON_BYTES``)
``ticktape.stage``              who dead-lettered it: ``bars``, ``sink-postgres`` …
``ticktape.source.topic``       the message's topic
``ticktape.source.partition``   its partition
``ticktape.source.offset``      its offset (read the original back from there)
``ticktape.source.size``        its value's size in bytes
``ticktape.truncated``          only when cut: ``key``, ``value`` or ``key,value``
==============================  ==================================================

A record never exceeds ``DLQ_MAX_BYTES`` (a setting, well under the 1 MiB that brokers
and producers accept by default): a key or value too big for it is cut to a prefix and
the cut is named in ``ticktape.truncated``.  So a poison message can always be
forwarded, and never blocks its stage or sink.
"""

from __future__ import annotations

from dataclasses import dataclass

H_ERROR = "ticktape.error"
H_STAGE = "ticktape.stage"
H_TOPIC = "ticktape.source.topic"
H_PARTITION = "ticktape.source.partition"
H_OFFSET = "ticktape.source.offset"
H_SIZE = "ticktape.source.size"
H_TRUNCATED = "ticktape.truncated"

MAX_REASON_BYTES = 1024
MAX_KEY_BYTES = 1024  # keys are symbols or accounts: anything longer is not one
# Bytes a record costs beyond its key, value and headers (record and batch framing,
# with room to spare for any client's estimate).
RECORD_OVERHEAD = 512


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def truncated(self) -> bool:
        return any(k == H_TRUNCATED for k, _ in self.headers)


def _cut_text(text: str, limit: int) -> bytes:
    """UTF-8 of ``text``, at most ``limit`` bytes, never ending inside a character."""
    return text.encode()[:limit].decode(errors="ignore").encode()


def dead_letter(
    reason: str,
    *,
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    max_bytes: int,
    payload: bytes | None = None,
) -> DeadLetter:
    """The dead-letter record of the message at ``topic``/``partition``/``offset`` whose
    key and value are ``key`` and ``value``, failed for ``reason`` in ``stage``.

    ``payload`` replaces the value in the record (the bars stage sends one tick of a
    TickBatch); ``ticktape.source.size`` is always the source value's size.  The record
    (key + value + headers + framing) fits in ``max_bytes``."""
    body = value if payload is None else payload
    headers = [
        (H_ERROR, _cut_text(reason, MAX_REASON_BYTES)),
        (H_STAGE, stage.encode()),
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_SIZE, str(len(value or b"")).encode()),
    ]
    cut = []
    if key is not None and len(key) > MAX_KEY_BYTES:
        key = key[:MAX_KEY_BYTES]
        cut.append("key")
    room = max_bytes - RECORD_OVERHEAD - len(key or b"") - sum(len(k) + len(v) for k, v in headers)
    room -= len(H_TRUNCATED) + len("key,value")  # the mark may be needed
    if body is not None and len(body) > room:
        body = body[: max(0, room)]
        cut.append("value")
    if cut:
        headers.append((H_TRUNCATED, ",".join(cut).encode()))
    return DeadLetter(key, body, headers)


def of_message(msg, reason: str, *, stage: str, max_bytes: int, payload: bytes | None = None) -> DeadLetter:
    """``dead_letter`` of a Faust message (attributes topic, partition, offset, key, value)."""
    return dead_letter(
        reason,
        stage=stage,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        value=msg.value,
        max_bytes=max_bytes,
        payload=payload,
    )

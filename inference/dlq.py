"""Turning Kafka records into raw documents, or into dead letters that say why not.

A record becomes exactly one of:

- a :class:`RawDocument` (``id`` missing -> ``topic-partition-offset``, stable under redelivery; ``ingested_at``
  missing -> the Kafka record timestamp, so the target index is derived from the message, not the write time);
- a :class:`DeadLetter` with a machine-readable ``reason``: ``undecodable_bytes`` (not UTF-8),
  ``invalid_json``, ``schema_violation`` (the pydantic error, e.g. missing text or an unknown channel),
  ``empty_text``; later stages add ``es_rejected`` (Elasticsearch refused the document). The original payload
  travels with it (``payload`` when it decodes, ``payload_b64`` when it does not) with its source coordinates.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.records import DeadLetter, RawDocument

STAGE = "worker"


@dataclass(frozen=True)
class Source:
    """Where a message came from (the fields of a kafka-python ConsumerRecord the worker needs)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, record: Any) -> Source:
        ts = getattr(record, "timestamp", None)
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=ts if isinstance(ts, int) and ts >= 0 else None,
            key=record.key,
            value=record.value,
        )

    @property
    def default_id(self) -> str:
        return f"{self.topic}-{self.partition}-{self.offset}"

    def coordinates(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "timestamp": self.timestamp_ms}


def dead_letter(source: Source, reason: str, error: str) -> DeadLetter:
    payload: str | None = None
    payload_b64: str | None = None
    if source.value is not None:
        try:
            payload = source.value.decode("utf-8")
        except UnicodeDecodeError:
            payload_b64 = base64.b64encode(source.value).decode("ascii")
    key: str | None = None
    if source.key is not None:
        key = source.key.decode("utf-8", errors="replace")
    return DeadLetter(
        reason=reason,
        error=error[:4000],
        stage=STAGE,
        source_topic=source.topic,
        source_partition=source.partition,
        source_offset=source.offset,
        source_timestamp_ms=source.timestamp_ms,
        key=key,
        payload=payload,
        payload_b64=payload_b64,
    )


def _is_blank_text(data: dict[str, Any]) -> bool:
    text = data.get("text")
    return isinstance(text, str) and not text.strip()


def parse(source: Source) -> RawDocument | DeadLetter:
    """Parse one message; never raises for bad input (a dead letter is returned instead)."""
    if source.value is None:
        return dead_letter(source, "invalid_json", "empty message (null value / tombstone)")
    try:
        text = source.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return dead_letter(source, "undecodable_bytes", f"payload is not UTF-8: {exc}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        return dead_letter(source, "invalid_json", f"payload is not JSON: {exc}")
    if not isinstance(data, dict):
        return dead_letter(source, "schema_violation", f"payload is a JSON {type(data).__name__}, not an object")
    if _is_blank_text(data):
        return dead_letter(source, "empty_text", "text is empty or whitespace")
    if not data.get("id"):
        data["id"] = source.default_id
    if data.get("ingested_at") is None:
        when = (
            datetime.fromtimestamp(source.timestamp_ms / 1000, tz=UTC)
            if source.timestamp_ms is not None
            else datetime.now(tz=UTC)
        )
        data["ingested_at"] = when
    try:
        return RawDocument.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        return dead_letter(source, "schema_violation", json.dumps(errors, default=str))

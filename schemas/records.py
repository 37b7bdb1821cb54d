"""Message records shared by every stage (UTF-8 JSON on Kafka; the Kafka key is the document id).

The raw-document contract (``../shared/DESIGN.md``):

- ``id``: assigned once at the edge and carried from then on (news: hash of the canonical URL; pushed or file
  messages: the source's own message id, else a UUID at ingestion; never a hash of the text). A message that
  reaches the raw topic without an id gets ``topic-partition-offset`` from the worker, stable under redelivery.
- ``channel``: ``news`` | ``customer_service``; ``text`` required and non-empty.
- optional ``source``, ``title``, ``url``, ``published_at`` (ISO 8601, normalised to UTC), ``language``,
  ``entities``, ``metadata``. Unknown top-level fields are kept under ``metadata`` rather than dropped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

Channel = Literal["news", "customer_service"]
CHANNELS: tuple[str, ...] = ("news", "customer_service")

MAX_TEXT_CHARS = 100_000
MAX_ID_BYTES = 512  # Elasticsearch refuses a longer _id, and with it the whole bulk request that carries it


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


def _to_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Entity(BaseModel):
    """A thing a document mentions: a cashtag (``$AAPL``) or a company from the configured list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["cashtag", "company", "ticker", "other"]
    value: str = Field(min_length=1, max_length=200)
    text: str | None = Field(default=None, description="The matched surface text, when it differs from value.")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


class RawDocument(_Record):
    """A document as ingest publishes it to ``riskstream.docs.raw``."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="RawDocument")

    schema_version: int = SCHEMA_VERSION
    id: str = Field(min_length=1, max_length=512, description="Stable document id assigned at the edge.")
    channel: Channel
    source: str = Field(default="unknown", min_length=1, max_length=500)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    title: str | None = Field(default=None, max_length=2000)
    url: str | None = Field(default=None, max_length=4000)
    published_at: datetime | None = None
    ingested_at: datetime | None = Field(default=None, description="When the edge accepted the document (UTC).")
    language: str | None = Field(default=None, max_length=16)
    entities: list[Entity] = Field(default_factory=list)
    story_id: str | None = Field(default=None, description="Id of the first document of a near-duplicate story.")
    is_novel: bool | None = Field(default=None, description="False for a syndicated copy of an earlier story.")
    redactions: dict[str, int] = Field(
        default_factory=dict, description="PII placeholders applied at ingest, by type (counts only, never values)."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _unknown_fields_to_metadata(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields)
        extra = {k: v for k, v in data.items() if k not in known}
        if not extra:
            return data
        kept = {k: v for k, v in data.items() if k in known}
        metadata = dict(kept.get("metadata") or {})
        for key, value in extra.items():
            metadata.setdefault(key, value)
        kept["metadata"] = metadata
        return kept

    @field_validator("id")
    @classmethod
    def _id_fits_elasticsearch(cls, value: str) -> str:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_ID_BYTES:
            raise ValueError(f"id is {size} bytes in UTF-8; at most {MAX_ID_BYTES} (Elasticsearch's _id limit)")
        return value

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty")
        return value

    @field_validator("published_at", "ingested_at", mode="after")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _to_utc(value)


class Prediction(_Record):
    """One head's answer: the top label, its calibrated probability, and the full distribution."""

    label: str
    score: float = Field(ge=0.0, le=1.0)
    probs: dict[str, float] | None = Field(
        default=None, description="Calibrated probability of every label (omitted for large label sets)."
    )
    margin: float | None = Field(default=None, description="Top-1 minus top-2 probability (labeling queue).")


class ScoredDocument(RawDocument):
    """A raw document plus the model's answers; written to Elasticsearch and ``riskstream.docs.scored``."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="ScoredDocument")

    ingested_at: datetime  # required once scored
    scored_at: datetime
    sentiment: Prediction
    topic: Prediction
    model_version: str = Field(min_length=1)
    risk_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="P(negative sentiment), the dashboard's risk measure."
    )
    uncertainty: float | None = Field(
        default=None, ge=0.0, le=1.0, description="1 - min head margin; high means a good labeling candidate."
    )
    kafka: dict[str, Any] | None = Field(default=None, description="Source topic, partition, offset, timestamp.")


class DeadLetter(_Record):
    """A message the pipeline could not process, kept as data with the reason and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="DeadLetter")

    schema_version: int = SCHEMA_VERSION
    reason: str = Field(description="Machine-readable reason, e.g. invalid_json, schema_violation, empty_text.")
    error: str = Field(description="Human-readable detail of the failure.")
    stage: str = Field(description="Which process rejected it: ingest, worker, alerts.")
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    source_timestamp_ms: int | None = None
    key: str | None = None
    payload: str | None = Field(default=None, description="The original payload, UTF-8 (when it decodes).")
    payload_b64: str | None = Field(default=None, description="The original payload, base64 (when it does not).")
    payload_truncated: bool = Field(
        default=False,
        description="The payload was cut to fit the dead-letter topic. At the worker the whole message stays at "
        "source_topic / source_partition / source_offset for the topic's retention; at ingest it stays where it came "
        "from (the file and line the key names, the client that pushed it, the crawled page).",
    )
    payload_size: int | None = Field(default=None, description="Length of the original payload, when truncated.")
    failed_at: datetime = Field(default_factory=utcnow)


def fit_dead_letter(letter: DeadLetter, max_bytes: int, *, exclude_none: bool = False) -> bytes:
    """The dead letter's JSON, at most ``max_bytes`` long: a letter that would be longer (a message near the
    broker's size limit, with the error and coordinates added) keeps the start of its payload and says so
    (``payload_truncated``, ``payload_size``). A dead letter the topic refuses would stall its batch for good."""
    body = letter.model_dump_json(exclude_none=exclude_none).encode("utf-8")
    if len(body) <= max_bytes:
        return body
    field_name = "payload" if letter.payload is not None else "payload_b64"
    original: str = getattr(letter, field_name) or ""
    keep = len(original)
    while True:
        # shrink in proportion to the excess (escaping makes characters and bytes differ), then check
        keep = max(0, min(keep - 1, keep * max_bytes // len(body) - 64))
        cut = letter.model_copy(
            update={field_name: original[:keep], "payload_truncated": True, "payload_size": len(original)}
        )
        body = cut.model_dump_json(exclude_none=exclude_none).encode("utf-8")
        if len(body) <= max_bytes or keep == 0:
            return body


AlertSeverity = Literal["info", "warning", "critical"]


class Alert(_Record):
    """An alert fired by a rule over a time window (``riskstream.alerts`` and ``riskstream-alerts``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Alert")

    schema_version: int = SCHEMA_VERSION
    id: str = Field(description="Deterministic: rule id + group hash + window start, so a replay fires the same id.")
    rule_id: str
    rule_name: str
    severity: AlertSeverity = "warning"
    channel: Channel | None = None
    window_start: datetime
    window_end: datetime
    fired_at: datetime = Field(default_factory=utcnow)
    value: float = Field(description="The measured value that crossed the threshold.")
    threshold: float
    doc_count: int = Field(ge=0)
    group: dict[str, str] = Field(default_factory=dict, description="Group-by values (e.g. entity, topic).")
    sample_doc_ids: list[str] = Field(default_factory=list, max_length=50)
    message: str = ""


LabelTask = Literal["news_sentiment", "news_topic", "cs_sentiment", "cs_topic"]


class Label(_Record):
    """An analyst's label for one document and one task (feeds fine-tuning)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Label")

    doc_id: str = Field(min_length=1)
    task: LabelTask
    label: str = Field(min_length=1)
    text: str = Field(min_length=1, description="The (redacted) text labeled, so training needs no ES lookup.")
    labeled_by: str = Field(min_length=1)
    labeled_at: datetime = Field(default_factory=utcnow)
    model_version: str | None = Field(default=None, description="Model whose prediction the analyst saw.")
    predicted_label: str | None = None


ModelStatus = Literal["candidate", "champion", "retired", "rejected"]


class ModelVersionRecord(_Record):
    """A model version as the registry describes it."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="ModelVersion", protected_namespaces=())

    version: str
    base_model: str
    status: ModelStatus
    artifact_path: str
    artifact_sha256: str
    data_fingerprint: str
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    promoted_at: datetime | None = None
    promoted_by: str | None = None

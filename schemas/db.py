"""The SQL store: users and roles, analyst labels, alert rules and their state, the model registry, and the
ingest edge's durable state (crawl validators, processed files, dedupe signatures).

SQLite (a file under the data dir) is the embedded default; PostgreSQL is the shared-deployment store. Both are
created and upgraded only through the Alembic migrations in ``schemas/migrations`` (``riskstream db upgrade``),
never with ``create_all``, so the two engines cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

ROLES: tuple[str, ...] = ("viewer", "labeler", "admin")


def _utcnow() -> datetime:
    return datetime.now(tz=UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(120), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))  # viewer | labeler | admin
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)


class LabelRow(Base):
    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("doc_id", "task", "labeled_by", name="uq_label_doc_task_user"),
        Index("ix_labels_task_labeled_at", "task", "labeled_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    doc_id: Mapped[str] = mapped_column(String(512))
    task: Mapped[str] = mapped_column(String(40))
    label: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    labeled_by: Mapped[str] = mapped_column(String(120))
    labeled_at: Mapped[datetime] = mapped_column(default=_utcnow)
    model_version: Mapped[str | None] = mapped_column(String(120), default=None)
    predicted_label: Mapped[str | None] = mapped_column(String(200), default=None)


class AlertRuleRow(Base):
    __tablename__ = "alert_rules"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=_utcnow)
    silenced_until: Mapped[datetime | None] = mapped_column(default=None)


class AlertDeliveryRow(Base):
    """One webhook delivery of one alert; failed sends are retried from here."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (UniqueConstraint("alert_id", "target", name="uq_delivery_alert_target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[str] = mapped_column(String(300))
    rule_id: Mapped[str] = mapped_column(String(120), ForeignKey("alert_rules.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    next_attempt_at: Mapped[datetime] = mapped_column(default=_utcnow)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (Index("ix_model_versions_status", "status"),)

    version: Mapped[str] = mapped_column(String(120), primary_key=True)
    base_model: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(20))  # candidate | champion | retired | rejected
    artifact_path: Mapped[str] = mapped_column(String(2000))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(default=None)
    promoted_by: Mapped[str | None] = mapped_column(String(120), default=None)
    previous_champion: Mapped[str | None] = mapped_column(String(120), default=None)
    notes: Mapped[str | None] = mapped_column(Text, default=None)


class RegistryEventRow(Base):
    """Audit trail of registry changes (promote, reject, rollback), who did it and why."""

    __tablename__ = "registry_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(120))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(default=_utcnow)


class FinetuneRunRow(Base):
    __tablename__ = "finetune_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=_utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | succeeded | failed
    candidate_version: Mapped[str | None] = mapped_column(String(120), default=None)
    labels_seen: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class CrawlStateRow(Base):
    """Conditional-GET validators and politeness state per URL (feeds, pages, robots.txt)."""

    __tablename__ = "crawl_state"

    url: Mapped[str] = mapped_column(String(2000), primary_key=True)
    etag: Mapped[str | None] = mapped_column(String(500), default=None)
    last_modified: Mapped[str | None] = mapped_column(String(200), default=None)
    status: Mapped[int | None] = mapped_column(Integer, default=None)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)  # robots.txt bodies only
    fetched_at: Mapped[datetime | None] = mapped_column(default=None)
    retry_after: Mapped[datetime | None] = mapped_column(default=None)


class ProcessedFileRow(Base):
    """Files the watched-directory source has published, so each is processed once across restarts."""

    __tablename__ = "processed_files"

    path: Mapped[str] = mapped_column(String(2000), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    documents: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime] = mapped_column(default=_utcnow)


class SeenDocumentRow(Base):
    """Exact and near-duplicate state: content fingerprint, MinHash signature and the story it belongs to."""

    __tablename__ = "seen_documents"
    __table_args__ = (Index("ix_seen_content_hash", "content_hash"),)

    doc_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    channel: Mapped[str] = mapped_column(String(40))
    content_hash: Mapped[str] = mapped_column(String(64))
    story_id: Mapped[str] = mapped_column(String(512))
    minhash: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    seen_at: Mapped[datetime] = mapped_column(default=_utcnow)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with sane per-backend defaults (SQLite: WAL, foreign keys, a busy timeout)."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
    engine = create_engine(url, pool_pre_ping=True, future=True, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False, future=True)

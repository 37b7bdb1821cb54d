"""Model registry in the SQL store: which bundle is the champion, its digest, and the history.

Read side (used by the inference worker's hot swap and by ``riskstream eval``). The write side (register,
promote, reject, rollback) lives in ``finetune.registry`` and goes through the same tables.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.db import ModelVersionRow
from schemas.records import ModelVersionRecord


def to_record(row: ModelVersionRow) -> ModelVersionRecord:
    return ModelVersionRecord(
        version=row.version,
        base_model=row.base_model,
        status=row.status,
        artifact_path=row.artifact_path,
        artifact_sha256=row.artifact_sha256,
        data_fingerprint=row.data_fingerprint,
        config=row.config or {},
        metrics=row.metrics or {},
        created_at=row.created_at,
        promoted_at=row.promoted_at,
        promoted_by=row.promoted_by,
    )


def get_champion(session: Session) -> ModelVersionRecord | None:
    """The version currently promoted for serving, or None before the first promotion."""
    row = session.scalars(
        select(ModelVersionRow)
        .where(ModelVersionRow.status == "champion")
        .order_by(ModelVersionRow.promoted_at.desc())
        .limit(1)
    ).first()
    return to_record(row) if row is not None else None


def get_version(session: Session, version: str) -> ModelVersionRecord | None:
    row = session.get(ModelVersionRow, version)
    return to_record(row) if row is not None else None


def list_versions(session: Session) -> list[ModelVersionRecord]:
    rows = session.scalars(select(ModelVersionRow).order_by(ModelVersionRow.created_at.desc())).all()
    return [to_record(r) for r in rows]

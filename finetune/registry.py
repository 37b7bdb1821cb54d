"""Model registry, write side: register a candidate, promote (behind the gate), reject, roll back.

Every state change runs in one transaction together with its audit row (``registry_events``). A bundle is
verified (checksums against the registry's digest) and loaded before it may become champion, so a corrupt or
unloadable artifact is never promoted. The read side (``get_champion`` & co.) is ``riskstream.registry``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from riskstream.modeling import ArtifactError, load_bundle
from schemas.db import ModelVersionRow, RegistryEventRow

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to, refused by the gate)."""


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _event(session: Session, version: str, action: str, actor: str, detail: dict[str, Any]) -> None:
    session.add(RegistryEventRow(version=version, action=action, actor=actor, detail=detail, at=_now()))


def _champion_row(session: Session) -> ModelVersionRow | None:
    return session.scalars(
        select(ModelVersionRow)
        .where(ModelVersionRow.status == "champion")
        .order_by(ModelVersionRow.promoted_at.desc())
        .with_for_update()
    ).first()


def _end_read(session: Session) -> None:
    """End the implicit read transaction (autobegun by a query) so the write can run in its own ``begin()``."""
    if session.in_transaction():
        session.rollback()


def check_artifact(path: str | Path, sha256: str) -> None:
    """Raise ArtifactError unless the bundle matches its digest and loads."""
    bundle = load_bundle(Path(path), expected_sha256=sha256)
    del bundle


def register_candidate(
    session: Session,
    *,
    version: str,
    base_model: str,
    data_fingerprint: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    artifact_path: str,
    artifact_sha256: str,
    actor: str,
    notes: str | None = None,
) -> None:
    _end_read(session)
    with session.begin():
        if session.get(ModelVersionRow, version) is not None:
            raise RegistryError(f"version {version} is already registered")
        session.add(
            ModelVersionRow(
                version=version,
                base_model=base_model,
                status="candidate",
                artifact_path=artifact_path,
                artifact_sha256=artifact_sha256,
                data_fingerprint=data_fingerprint,
                config=config,
                metrics=metrics,
                created_at=_now(),
                notes=notes,
            )
        )
        _event(
            session, version, "register", actor, {"artifact_sha256": artifact_sha256, "fingerprint": data_fingerprint}
        )


def promote(
    session: Session, version: str, *, actor: str, detail: dict[str, Any] | None = None, verify: bool = True
) -> str | None:
    """Make ``version`` the champion (the old one is retired); returns the previous champion's version.

    The artifact is verified and loaded first (unless ``verify`` is False, for callers that just did so); a
    corrupt bundle raises ArtifactError and changes nothing. The gate is the caller's business.
    """
    row = session.get(ModelVersionRow, version)
    if row is None:
        raise RegistryError(f"unknown model version {version}")
    if verify:
        check_artifact(row.artifact_path, row.artifact_sha256)
    _end_read(session)
    with session.begin():
        row = session.get(ModelVersionRow, version, with_for_update=True)
        if row is None:  # pragma: no cover - deleted meanwhile
            raise RegistryError(f"unknown model version {version}")
        if row.status == "champion":
            raise RegistryError(f"{version} is already the champion")
        old = _champion_row(session)
        previous = old.version if old is not None else None
        if old is not None:
            old.status = "retired"
        row.status = "champion"
        row.promoted_at = _now()
        row.promoted_by = actor
        row.previous_champion = previous
        _event(session, version, "promote", actor, {"previous_champion": previous, **(detail or {})})
    log.info("promoted %s (previous champion: %s) by %s", version, previous, actor)
    return previous


def reject(session: Session, version: str, *, actor: str, reasons: list[str]) -> None:
    _end_read(session)
    with session.begin():
        row = session.get(ModelVersionRow, version, with_for_update=True)
        if row is None:
            raise RegistryError(f"unknown model version {version}")
        if row.status == "champion":
            raise RegistryError(f"{version} is the champion; roll back instead of rejecting it")
        row.status = "rejected"
        row.notes = "; ".join(reasons)[:4000]
        _event(session, version, "reject", actor, {"reasons": reasons})
    log.info("rejected %s: %s", version, "; ".join(reasons))


def rollback(session: Session, *, actor: str, verify: bool = True) -> tuple[str, str]:
    """Restore the champion's previous champion; returns (restored version, rolled-back version).

    The rolled-back version is retired; the restored one keeps its own ``previous_champion`` so that a second
    rollback goes one step further back. The restored artifact is verified before anything changes.
    """
    current = session.scalars(
        select(ModelVersionRow).where(ModelVersionRow.status == "champion").order_by(ModelVersionRow.promoted_at.desc())
    ).first()
    if current is None:
        raise RegistryError("there is no champion to roll back")
    if not current.previous_champion:
        raise RegistryError(f"the champion {current.version} has no previous champion to roll back to")
    target = session.get(ModelVersionRow, current.previous_champion)
    if target is None:
        raise RegistryError(f"previous champion {current.previous_champion} is not in the registry")
    if verify:
        check_artifact(target.artifact_path, target.artifact_sha256)
    cur_version, target_version = current.version, target.version
    _end_read(session)
    with session.begin():
        current = session.get(ModelVersionRow, cur_version, with_for_update=True)
        target = session.get(ModelVersionRow, target_version, with_for_update=True)
        if current is None or target is None or current.status != "champion":
            raise RegistryError("the registry changed during the rollback; try again")
        current.status = "retired"
        current.notes = f"rolled back to {target_version} by {actor} at {_now().isoformat()}"
        target.status = "champion"
        target.promoted_at = _now()
        target.promoted_by = actor
        _event(session, target_version, "rollback", actor, {"rolled_back": cur_version})
    log.info("rolled back %s -> %s by %s", cur_version, target_version, actor)
    return target_version, cur_version


def events(session: Session, version: str | None = None) -> list[RegistryEventRow]:
    query = select(RegistryEventRow).order_by(RegistryEventRow.id)
    if version is not None:
        query = query.where(RegistryEventRow.version == version)
    return list(session.scalars(query).all())


__all__ = [
    "ArtifactError",
    "RegistryError",
    "check_artifact",
    "events",
    "promote",
    "register_candidate",
    "reject",
    "rollback",
]

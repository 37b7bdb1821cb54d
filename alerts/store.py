"""The alert engine's SQL state: rules (validated on the way in and out) and webhook deliveries with retries.

Deliveries are rows of ``alert_deliveries``: one per alert and target (unique, so a replayed alert does not
queue a second send). The delivery loop claims rows that are ``pending`` and due, sends them, and either marks
them ``delivered`` or schedules the next attempt with exponential backoff (``base * 2**(attempts-1)``, capped),
until ``max_attempts`` is reached and the row becomes ``failed`` with the last error kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from alerts.rules import Rule, RuleError, load_rule
from schemas.db import AlertDeliveryRow, AlertRuleRow
from schemas.records import Alert

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(tz=UTC)


# ---- rules ----------------------------------------------------------------------------------------------------


def load_rules(session: Session, *, include_disabled: bool = False) -> tuple[list[Rule], list[str]]:
    """Rules from the store; an invalid stored definition is reported and skipped (never crashes the engine)."""
    rules: list[Rule] = []
    errors: list[str] = []
    query = select(AlertRuleRow).order_by(AlertRuleRow.id)
    for row in session.scalars(query):
        if not row.enabled and not include_disabled:
            continue
        try:
            rule = load_rule({**row.definition, "id": row.id, "name": row.name}, origin="stored rule")
        except RuleError as exc:
            errors.append(str(exc))
            continue
        rules.append(rule.model_copy(update={"enabled": row.enabled}))
    return rules, errors


def save_rule(session: Session, rule: Rule, *, actor: str) -> AlertRuleRow:
    """Insert or replace a rule (already validated: it is a :class:`Rule`)."""
    definition = rule.model_dump(mode="json", exclude={"id", "name", "enabled"})
    row = session.get(AlertRuleRow, rule.id)
    if row is None:
        row = AlertRuleRow(id=rule.id, name=rule.name, definition=definition, enabled=rule.enabled, created_by=actor)
        session.add(row)
    else:
        row.name = rule.name
        row.definition = definition
        row.enabled = rule.enabled
        row.updated_at = _now()
    session.flush()
    return row


def set_enabled(session: Session, rule_id: str, enabled: bool) -> bool:
    row = session.get(AlertRuleRow, rule_id)
    if row is None:
        return False
    row.enabled = enabled
    row.updated_at = _now()
    return True


def muted_rule_ids(session: Session, now: datetime | None = None) -> set[str]:
    """Rules an operator muted (``silenced_until`` in the future): they evaluate but do not fire."""
    current = now or _now()
    rows = session.scalars(select(AlertRuleRow).where(AlertRuleRow.silenced_until.is_not(None)))
    return {r.id for r in rows if r.silenced_until is not None and r.silenced_until > current}


# ---- deliveries -----------------------------------------------------------------------------------------------


def enqueue(session: Session, alert: Alert, targets: list[str]) -> int:
    """Queue one delivery per target; an (alert, target) pair already queued is left alone. Returns new rows."""
    payload = alert.model_dump(mode="json")
    added = 0
    for target in targets:
        exists = session.scalars(
            select(AlertDeliveryRow.id).where(AlertDeliveryRow.alert_id == alert.id, AlertDeliveryRow.target == target)
        ).first()
        if exists is not None:
            continue
        try:
            with session.begin_nested():
                session.add(AlertDeliveryRow(alert_id=alert.id, rule_id=alert.rule_id, target=target, payload=payload))
            added += 1
        except IntegrityError:  # a concurrent engine queued it first
            continue
    return added


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 5.0
    max_delay: float = 3600.0

    def delay(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.max_delay, self.base_delay * 2 ** max(0, attempts - 1)))


@dataclass
class DeliveryReport:
    delivered: int = 0
    retried: int = 0
    failed: int = 0


Sender = Callable[[str, dict[str, Any], str], Any]
"""(target URL, payload, alert id) -> anything; raises on failure."""


def deliver_due(
    sessions: sessionmaker[Session],
    send: Sender,
    policy: RetryPolicy,
    *,
    permanent: tuple[type[BaseException], ...] = (),
    limit: int = 50,
    now: datetime | None = None,
) -> DeliveryReport:
    """Send every pending delivery that is due, recording the outcome of each attempt on its row.

    Exceptions in ``permanent`` (e.g. the SSRF guard refusing a target) fail the row at once; any other
    exception is retried with backoff until ``policy.max_attempts``.
    """
    report = DeliveryReport()
    current = now or _now()
    due = (
        select(AlertDeliveryRow)
        .where(AlertDeliveryRow.status == "pending", AlertDeliveryRow.next_attempt_at <= current)
        .order_by(AlertDeliveryRow.next_attempt_at, AlertDeliveryRow.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # PostgreSQL: two engines never send the same row (SQLite: no-op)
    )
    with sessions() as session:
        for _ in range(limit):
            row = session.scalars(due).first()  # one row per transaction: a claim is held only while it is sent
            if row is None:
                break
            row.attempts += 1
            try:
                send(row.target, row.payload, row.alert_id)
            except permanent as exc:
                row.status = "failed"
                row.last_error = f"refused: {exc}"[:2000]
                report.failed += 1
                log.warning("delivery %s of alert %s refused: %s", row.id, row.alert_id, exc)
            except Exception as exc:
                row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                if row.attempts >= policy.max_attempts:
                    row.status = "failed"
                    report.failed += 1
                    log.warning("delivery %s of alert %s failed for good: %s", row.id, row.alert_id, exc)
                else:
                    row.next_attempt_at = current + policy.delay(row.attempts)
                    report.retried += 1
            else:
                row.status = "delivered"
                row.delivered_at = _now()
                row.last_error = None
                report.delivered += 1
            session.commit()
    return report

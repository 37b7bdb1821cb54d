"""THE dashboard data layer: every read and write the UI does, each gated by the caller's role.

Roles (``schemas.db.ROLES``), each including the one before:

- ``viewer``: live risk picture, alerts, search;
- ``labeler``: also the labeling queue and writing labels (its own);
- ``admin``: also users and alert rules.

Every public method takes the :class:`~dashboard.auth.CurrentUser` first and checks it *against the store* before
touching Elasticsearch or SQL: a user deactivated or demoted a second ago is refused now, whatever the browser
session still believes. Refusals raise :class:`~dashboard.auth.PermissionDeniedError`. Hiding pages in the UI is
a convenience on top of this, not the enforcement.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from alerts import store as rule_store
from alerts.rules import Rule, RuleError, load_rule
from dashboard.auth import ROLE_RANK, CurrentUser, PermissionDeniedError, create_user, hash_password, validate_role
from riskstream.db import Database
from schemas.db import LabelRow, ModelVersionRow, User
from schemas.records import Label

log = logging.getLogger(__name__)

# task -> (channel, kind): the contract of riskstream.modeling.TASKS, repeated here so the dashboard does not
# import torch; tests/dashboard checks the two agree.
TASKS: dict[str, tuple[str, str]] = {
    "news_sentiment": ("news", "sentiment"),
    "news_topic": ("news", "topic"),
    "cs_sentiment": ("customer_service", "sentiment"),
    "cs_topic": ("customer_service", "topic"),
}
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")


class NotFoundError(LookupError):
    """The document, user or rule asked for does not exist."""


@dataclass(frozen=True)
class QueueItem:
    doc_id: str
    task: str
    text: str
    title: str | None
    source: str
    ingested_at: str | None
    uncertainty: float
    predicted_label: str
    predicted_score: float
    model_version: str
    options: tuple[str, ...]


def _since(hours: float) -> str:
    return (datetime.now(tz=UTC) - timedelta(hours=hours)).isoformat()


class DataLayer:
    """Reads and writes for the dashboard; ``es`` is an ``elasticsearch.Elasticsearch`` client."""

    def __init__(self, db: Database, es: Any, *, docs_alias: str, alerts_alias: str) -> None:
        self.db = db
        self.es = es
        self.docs_alias = docs_alias
        self.alerts_alias = alerts_alias
        self._labels_cache: dict[str, tuple[str, tuple[str, ...]]] = {}

    # ---- the gate -----------------------------------------------------------------------------------------------

    def require(self, user: CurrentUser, role: str) -> CurrentUser:
        """The user as the store sees it now, if active and at least ``role``; else PermissionDeniedError."""
        with self.db.session() as session:
            row = session.get(User, user.id)
            if row is None or row.username != user.username or not row.active:
                raise PermissionDeniedError("this account is disabled or no longer exists")
            if ROLE_RANK.get(row.role, -1) < ROLE_RANK[role]:
                raise PermissionDeniedError(f"{role} role required (you are {row.role})")
            return CurrentUser(id=row.id, username=row.username, role=row.role)

    # ---- viewer: risk picture, alerts, search ---------------------------------------------------------------------

    def risk_overview(self, user: CurrentUser, *, hours: float = 24, interval: str = "1h") -> dict[str, Any]:
        """Doc counts and mean risk over time by channel, by topic, and the most negative entities."""
        self.require(user, "viewer")
        body = {
            "size": 0,
            "query": {"range": {"ingested_at": {"gte": _since(hours)}}},
            "aggs": {
                "over_time": {
                    "date_histogram": {"field": "ingested_at", "fixed_interval": interval, "min_doc_count": 1},
                    "aggs": {
                        "channel": {"terms": {"field": "channel"}, "aggs": {"risk": {"avg": {"field": "risk_score"}}}}
                    },
                },
                "topics": {
                    "terms": {"field": "topic.label", "size": 25},
                    "aggs": {
                        "risk": {"avg": {"field": "risk_score"}},
                        "channel": {"terms": {"field": "channel", "size": 2}},
                    },
                },
                "entities": {
                    "nested": {"path": "entities"},
                    "aggs": {
                        "value": {
                            "terms": {"field": "entities.value", "size": 200},
                            "aggs": {
                                "docs": {
                                    "reverse_nested": {},
                                    "aggs": {
                                        "risk": {"avg": {"field": "risk_score"}},
                                        "negative": {"filter": {"term": {"sentiment.label": "negative"}}},
                                    },
                                }
                            },
                        }
                    },
                },
            },
        }
        res = self.es.search(index=self.docs_alias, ignore_unavailable=True, allow_no_indices=True, **body)
        aggs = res.get("aggregations") or {}
        series = [
            {"time": b["key_as_string"], "channel": c["key"], "docs": c["doc_count"], "mean_risk": c["risk"]["value"]}
            for b in aggs.get("over_time", {}).get("buckets", [])
            for c in b["channel"]["buckets"]
        ]
        topics = [
            {
                "topic": b["key"],
                "channel": b["channel"]["buckets"][0]["key"] if b["channel"]["buckets"] else None,
                "docs": b["doc_count"],
                "mean_risk": b["risk"]["value"],
            }
            for b in aggs.get("topics", {}).get("buckets", [])
        ]
        entities = [
            {
                "entity": b["key"],
                "docs": b["docs"]["doc_count"],
                "negative": b["docs"]["negative"]["doc_count"],
                "mean_risk": b["docs"]["risk"]["value"],
            }
            for b in aggs.get("entities", {}).get("value", {}).get("buckets", [])
        ]
        entities.sort(key=lambda e: (-e["negative"], -(e["mean_risk"] or 0.0)))
        total = res["hits"]["total"]["value"] if isinstance(res["hits"]["total"], dict) else res["hits"]["total"]
        return {"total": total, "series": series, "topics": topics, "entities": entities[:20]}

    def alerts(
        self, user: CurrentUser, *, hours: float = 24, severity: str | None = None, size: int = 200
    ) -> list[dict[str, Any]]:
        self.require(user, "viewer")
        filters: list[dict[str, Any]] = [{"range": {"window_end": {"gte": _since(hours)}}}]
        if severity:
            filters.append({"term": {"severity": severity}})
        res = self.es.search(
            index=self.alerts_alias,
            query={"bool": {"filter": filters}},
            sort=[{"window_start": "desc"}, {"id": "asc"}],
            size=min(size, 1000),
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        return [h["_source"] for h in res["hits"]["hits"]]

    def search(
        self,
        user: CurrentUser,
        text: str = "",
        *,
        channel: str | None = None,
        topic: str | None = None,
        sentiment: str | None = None,
        entity: str | None = None,
        hours: float | None = None,
        size: int = 50,
    ) -> list[dict[str, Any]]:
        """Full-text search with filters; each hit carries the analysts' labels from the store."""
        self.require(user, "viewer")
        must: list[dict[str, Any]] = []
        if text.strip():
            must.append({"simple_query_string": {"query": text, "fields": ["text", "title^2"]}})
        filters: list[dict[str, Any]] = []
        if channel:
            filters.append({"term": {"channel": channel}})
        if topic:
            filters.append({"term": {"topic.label": topic}})
        if sentiment:
            filters.append({"term": {"sentiment.label": sentiment}})
        if entity:
            filters.append({"nested": {"path": "entities", "query": {"term": {"entities.value": entity}}}})
        if hours:
            filters.append({"range": {"ingested_at": {"gte": _since(hours)}}})
        res = self.es.search(
            index=self.docs_alias,
            query={"bool": {"must": must or [{"match_all": {}}], "filter": filters}},
            sort=["_score", {"ingested_at": "desc"}],
            size=min(size, 500),
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        hits = [h["_source"] | {"_score": h.get("_score")} for h in res["hits"]["hits"]]
        ids = [h["id"] for h in hits]
        labels: dict[str, list[dict[str, str]]] = {}
        if ids:
            with self.db.session() as session:
                for row in session.scalars(select(LabelRow).where(LabelRow.doc_id.in_(ids))):
                    labels.setdefault(row.doc_id, []).append(
                        {"task": row.task, "label": row.label, "by": row.labeled_by}
                    )
        for h in hits:
            h["labels"] = labels.get(h["id"], [])
        return hits

    # ---- labeler: the queue and labels ------------------------------------------------------------------------------

    def label_options(self, task: str, doc: dict[str, Any] | None = None) -> tuple[str, ...]:
        """The labels an analyst may choose for ``task``: the sentiment set, or the champion model's topic set."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        if TASKS[task][1] == "sentiment":
            return SENTIMENT_LABELS
        labels = self._champion_labels(task)
        if labels:
            return labels
        probs = ((doc or {}).get("topic") or {}).get("probs") or {}
        predicted = ((doc or {}).get("topic") or {}).get("label")
        return tuple(sorted(set(probs) | ({predicted} if predicted else set())))

    def _champion_labels(self, task: str) -> tuple[str, ...]:
        with self.db.session() as session:
            row = session.scalars(
                select(ModelVersionRow)
                .where(ModelVersionRow.status == "champion")
                .order_by(ModelVersionRow.promoted_at.desc())
            ).first()
            if row is None:
                return ()
            version, path = row.version, row.artifact_path
        cached = self._labels_cache.get(task)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
            labels = tuple(manifest["tasks"][task]["labels"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot read the labels of %s from model %s: %s", task, version, exc)
            return ()
        self._labels_cache[task] = (version, labels)
        return labels

    def labeled_doc_ids(self, user: CurrentUser, task: str) -> set[str]:
        checked = self.require(user, "labeler")
        with self.db.session() as session:
            return set(
                session.scalars(
                    select(LabelRow.doc_id).where(LabelRow.task == task, LabelRow.labeled_by == checked.username)
                )
            )

    def labeling_queue(self, user: CurrentUser, task: str, *, size: int = 20, hours: float = 72) -> list[QueueItem]:
        """The most uncertain recent documents of the task's channel that this user has not labeled yet."""
        checked = self.require(user, "labeler")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        channel, kind = TASKS[task]
        done = sorted(self.labeled_doc_ids(checked, task))
        query: dict[str, Any] = {
            "bool": {
                "filter": [
                    {"term": {"channel": channel}},
                    {"exists": {"field": "uncertainty"}},
                    {"range": {"ingested_at": {"gte": _since(hours)}}},
                ],
                "must_not": [{"ids": {"values": done}}] if done else [],
            }
        }
        res = self.es.search(
            index=self.docs_alias,
            query=query,
            sort=[{"uncertainty": "desc"}, {"ingested_at": "desc"}, {"id": "asc"}],
            size=min(size, 200),
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        items = []
        for hit in res["hits"]["hits"]:
            doc = hit["_source"]
            pred = doc[kind]
            items.append(
                QueueItem(
                    doc_id=doc["id"],
                    task=task,
                    text=doc["text"],
                    title=doc.get("title"),
                    source=doc.get("source", ""),
                    ingested_at=doc.get("ingested_at"),
                    uncertainty=float(doc["uncertainty"]),
                    predicted_label=pred["label"],
                    predicted_score=float(pred["score"]),
                    model_version=doc["model_version"],
                    options=self.label_options(task, doc),
                )
            )
        return items

    def _get_doc(self, doc_id: str) -> dict[str, Any]:
        res = self.es.search(
            index=self.docs_alias, query={"ids": {"values": [doc_id]}}, size=1, ignore_unavailable=True
        )
        hits = res["hits"]["hits"]
        if not hits:
            raise NotFoundError(f"no document {doc_id!r}")
        source: dict[str, Any] = hits[0]["_source"]
        return source

    def save_label(self, user: CurrentUser, doc_id: str, task: str, label: str) -> Label:
        """Record this user's label for the document (a second label by the same user replaces the first)."""
        checked = self.require(user, "labeler")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        doc = self._get_doc(doc_id)
        channel, kind = TASKS[task]
        if doc["channel"] != channel:
            raise ValueError(f"task {task} is for {channel} documents; {doc_id} is {doc['channel']}")
        options = self.label_options(task, doc)
        if label not in options:
            raise ValueError(f"{label!r} is not a label of {task}")
        record = Label(
            doc_id=doc_id,
            task=task,
            label=label,
            text=doc["text"],
            labeled_by=checked.username,
            model_version=doc.get("model_version"),
            predicted_label=(doc.get(kind) or {}).get("label"),
        )
        with self.db.session() as session:
            row = session.scalars(
                select(LabelRow).where(
                    LabelRow.doc_id == doc_id, LabelRow.task == task, LabelRow.labeled_by == checked.username
                )
            ).first()
            if row is None:
                row = LabelRow(doc_id=doc_id, task=task, labeled_by=checked.username, label=label, text=record.text)
                session.add(row)
            row.label = label
            row.text = record.text
            row.labeled_at = record.labeled_at
            row.model_version = record.model_version
            row.predicted_label = record.predicted_label
            session.commit()
        log.info("label: %s %s=%s by %s", doc_id, task, label, checked.username)
        return record

    def my_label_count(self, user: CurrentUser) -> int:
        checked = self.require(user, "labeler")
        with self.db.session() as session:
            return len(list(session.scalars(select(LabelRow.id).where(LabelRow.labeled_by == checked.username))))

    # ---- admin: users ----------------------------------------------------------------------------------------------

    def list_users(self, user: CurrentUser) -> list[dict[str, Any]]:
        self.require(user, "admin")
        with self.db.session() as session:
            return [
                {
                    "username": u.username,
                    "role": u.role,
                    "active": u.active,
                    "created_at": u.created_at,
                    "last_login_at": u.last_login_at,
                }
                for u in session.scalars(select(User).order_by(User.username))
            ]

    def add_user(self, user: CurrentUser, username: str, password: str, role: str) -> None:
        self.require(user, "admin")
        with self.db.session() as session:
            try:
                create_user(session, username, password, role)
                session.commit()
            except IntegrityError as exc:
                raise ValueError(f"user {username!r} already exists") from exc
        log.info("user %s (%s) added by %s", username, role, user.username)

    def _user_row(self, session: Any, username: str) -> User:
        row = session.scalars(select(User).where(User.username == username)).first()
        if row is None:
            raise NotFoundError(f"no user {username!r}")
        return row

    def set_user_active(self, user: CurrentUser, username: str, active: bool) -> None:
        checked = self.require(user, "admin")
        if username == checked.username and not active:
            raise ValueError("you cannot deactivate your own account")
        with self.db.session() as session:
            self._user_row(session, username).active = active
            session.commit()
        log.info("user %s %s by %s", username, "activated" if active else "deactivated", checked.username)

    def set_user_role(self, user: CurrentUser, username: str, role: str) -> None:
        checked = self.require(user, "admin")
        validate_role(role)
        if username == checked.username and role != "admin":
            raise ValueError("you cannot remove your own admin role")
        with self.db.session() as session:
            self._user_row(session, username).role = role
            session.commit()
        log.info("user %s role -> %s by %s", username, role, checked.username)

    def reset_password(self, user: CurrentUser, username: str, password: str) -> None:
        self.require(user, "admin")
        hashed = hash_password(password)
        with self.db.session() as session:
            self._user_row(session, username).password_hash = hashed
            session.commit()
        log.info("password of %s reset by %s", username, user.username)

    # ---- admin: alert rules ------------------------------------------------------------------------------------------

    def list_rules(self, user: CurrentUser) -> tuple[list[Rule], list[str]]:
        self.require(user, "admin")
        with self.db.session() as session:
            return rule_store.load_rules(session, include_disabled=True)

    def save_rule(self, user: CurrentUser, definition: dict[str, Any]) -> Rule:
        """Validate and store a rule (RuleError with every problem when it does not validate)."""
        checked = self.require(user, "admin")
        rule = load_rule(definition)
        with self.db.session() as session:
            rule_store.save_rule(session, rule, actor=checked.username)
            session.commit()
        log.info("rule %s saved by %s", rule.id, checked.username)
        return rule

    def set_rule_enabled(self, user: CurrentUser, rule_id: str, enabled: bool) -> None:
        self.require(user, "admin")
        with self.db.session() as session:
            if not rule_store.set_enabled(session, rule_id, enabled):
                raise NotFoundError(f"no rule {rule_id!r}")
            session.commit()

    def mute_rule(self, user: CurrentUser, rule_id: str, until: datetime | None) -> None:
        """Stop a rule from firing until ``until`` (None: unmute); it keeps evaluating."""
        from schemas.db import AlertRuleRow

        self.require(user, "admin")
        with self.db.session() as session:
            row = session.get(AlertRuleRow, rule_id)
            if row is None:
                raise NotFoundError(f"no rule {rule_id!r}")
            row.silenced_until = until
            session.commit()


__all__ = ["DataLayer", "NotFoundError", "PermissionDeniedError", "QueueItem", "RuleError"]

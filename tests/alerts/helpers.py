"""Builders of scored documents for the alert tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.records import Entity, Prediction, ScoredDocument


def scored(
    doc_id: str,
    when: datetime,
    *,
    sentiment: str = "negative",
    topic: str = "Stock Movement",
    entities: tuple[str, ...] = ("$ACME",),
    channel: str = "news",
    risk: float | None = None,
    **extra: Any,
) -> ScoredDocument:
    return ScoredDocument(
        id=doc_id,
        channel=channel,  # type: ignore[arg-type]
        source="test-feed",
        text=f"text of {doc_id}",
        published_at=when,
        ingested_at=when,
        scored_at=datetime.now(tz=UTC),
        sentiment=Prediction(label=sentiment, score=0.9),
        topic=Prediction(label=topic, score=0.8),
        model_version="v-test",
        risk_score=risk if risk is not None else (0.9 if sentiment == "negative" else 0.1),
        entities=[Entity(type="cashtag", value=e) for e in entities],
        **extra,
    )

"""The record contracts: what is accepted, what is refused, what is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from schemas import RawDocument, ScoredDocument
from schemas.es import docs_mappings, index_for, index_template
from schemas.jsonschema import EXPORTED, schema_for


def test_unknown_fields_are_kept_under_metadata() -> None:
    doc = RawDocument.model_validate(
        {"id": "a", "channel": "news", "text": "Shares fell", "ticker_hint": "ACME", "metadata": {"k": 1}}
    )
    assert doc.metadata == {"k": 1, "ticker_hint": "ACME"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"id": "a", "channel": "news"}, "text"),
        ({"id": "a", "channel": "news", "text": "   \n"}, "text"),
        ({"id": "a", "channel": "email", "text": "hi"}, "channel"),
        ({"channel": "news", "text": "hi"}, "id"),
        # 300 characters but 600 bytes: Elasticsearch would refuse the bulk request carrying it, not just the item
        ({"id": "\u00e9" * 300, "channel": "news", "text": "hi"}, "id"),
    ],
)
def test_invalid_documents_name_the_field(payload: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RawDocument.model_validate(payload)
    assert field in str(info.value)


def test_times_are_normalised_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    doc = RawDocument(id="a", channel="news", text="x", published_at=datetime(2026, 1, 1, 12, 0, tzinfo=cet))
    assert doc.published_at == datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    naive = RawDocument(id="b", channel="news", text="x", published_at=datetime(2026, 1, 1, 12, 0))
    assert naive.published_at is not None and naive.published_at.tzinfo == UTC


def test_scored_document_keeps_raw_fields_and_round_trips_json() -> None:
    now = datetime(2026, 11, 22, 7, 0, tzinfo=UTC)
    raw = RawDocument(id="n1", channel="news", text="ACME beats", story_id="n0", is_novel=False, metadata={"x": 1})
    scored = ScoredDocument(
        **raw.model_dump(exclude={"ingested_at"}),
        ingested_at=now,
        scored_at=now,
        sentiment={"label": "positive", "score": 0.9},
        topic={"label": "Earnings", "score": 0.8},
        model_version="m1",
    )
    again = ScoredDocument.model_validate_json(scored.model_dump_json())
    assert again == scored
    assert again.story_id == "n0" and again.metadata == {"x": 1}


def test_index_is_derived_from_the_document_time_not_the_write_time() -> None:
    assert index_for("riskstream-docs", datetime(2026, 2, 28, 23, 30, tzinfo=timezone(timedelta(hours=-5)))) == (
        "riskstream-docs-2026.03"
    )
    body = index_template("riskstream-docs", docs_mappings())
    assert body["index_patterns"] == ["riskstream-docs-*"]
    assert body["template"]["aliases"] == {"riskstream-docs": {}}
    assert body["template"]["mappings"]["dynamic"] == "strict"


def test_scored_fields_are_all_mapped() -> None:
    """Every field a ScoredDocument can carry has an explicit mapping (dynamic: strict would refuse it)."""
    mapped = set(docs_mappings()["properties"])
    assert set(ScoredDocument.model_fields) <= mapped


def test_json_schema_exported_for_every_record() -> None:
    for name in EXPORTED:
        schema = schema_for(name)
        assert schema["$schema"].endswith("2020-12/schema")
    raw = schema_for("raw_document")
    assert "text" in raw["required"] and "channel" in raw["required"]

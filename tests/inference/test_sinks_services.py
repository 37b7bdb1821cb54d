"""The Elasticsearch bulk sink against a real node: what it writes, and what it does with documents the node refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from inference.sinks import EncodedDoc, EsBulkSink
from riskstream.settings import CommonSettings
from schemas.es import ensure_templates
from schemas.records import Entity, ScoredDocument
from tests.inference.helpers import es_docs

pytestmark = [pytest.mark.services]

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def scored(doc_id: str, **fields: Any) -> ScoredDocument:
    return ScoredDocument(
        id=doc_id,
        channel="news",
        text=f"Shares of {doc_id} fell",
        ingested_at=NOW,
        scored_at=NOW,
        sentiment={"label": "negative", "score": 0.9, "probs": {"negative": 0.9, "neutral": 0.06, "positive": 0.04}},
        topic={"label": "Markets", "score": 0.7},
        model_version="m1",
        risk_score=0.9,
        **fields,
    )


def test_refused_documents_come_back_and_the_others_are_written_as_encoded(settings: CommonSettings) -> None:
    from riskstream.es import make_client

    client = make_client(settings)
    ensure_templates(client, settings.es_docs_alias, settings.es_alerts_alias)
    sink = EsBulkSink(client, settings.es_docs_alias)
    good = [EncodedDoc.of(scored(f"good-{i}")) for i in range(5)]
    # refused as an item: more nested entities than the index allows (index.mapping.nested_objects.limit, 10,000)
    crowded = EncodedDoc.of(scored("crowded", entities=[Entity(type="cashtag", value="$A")] * 10_001))
    # refused with the whole request: an _id over 512 bytes (the schema refuses it; a document built without
    # validation stands for one that slipped past an older check)
    long_id = "\u00e9" * 300
    too_long = EncodedDoc.of(ScoredDocument.model_construct(**{**dict(scored("placeholder")), "id": long_id}))

    rejected = sink.write([good[0], crowded, good[1], good[2], too_long, good[3], good[4]])

    by_id = {r.doc.doc.id: r for r in rejected}
    assert set(by_id) == {"crowded", long_id}
    assert by_id["crowded"].status == 400 and "nested documents" in by_id["crowded"].error
    assert by_id[long_id].status == 400 and "too long" in by_id[long_id].error
    docs = {d["_id"]: d for d in es_docs(settings)}
    assert set(docs) == {f"good-{i}" for i in range(5)}
    for encoded in good:  # the node holds exactly the bytes that go to Kafka
        stored = {k: v for k, v in docs[encoded.doc.id].items() if k not in ("_id", "_index")}
        assert stored == json.loads(encoded.body)
        assert stored["sentiment"]["probs"]["negative"] == 0.9 and "title" not in stored  # None fields left out

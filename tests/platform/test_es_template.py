"""The composable index template shapes every write: explicit types, strict fields, monthly indices by document time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from elasticsearch import BadRequestError, Elasticsearch

from riskstream.es import make_client
from riskstream.settings import CommonSettings
from schemas.es import IndexLayoutError, ensure_templates, index_for
from schemas.records import Prediction, ScoredDocument

pytestmark = pytest.mark.services

INGESTED = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)  # a past month: never the index created "now"


def scored(doc_id: str, **extra: Any) -> dict[str, Any]:
    doc = ScoredDocument(
        id=doc_id,
        channel="news",
        source="feed:example",
        text="Regulator fines bank over money laundering failures",
        title="Bank fined",
        published_at=datetime(2025, 3, 13, 22, 0, tzinfo=UTC),
        ingested_at=INGESTED,
        scored_at=datetime(2025, 3, 14, 9, 30, 5, tzinfo=UTC),
        sentiment=Prediction(label="negative", score=0.91, probs={"negative": 0.91, "neutral": 0.06, "positive": 0.03}),
        topic=Prediction(label="Legal | Regulation", score=0.72),
        model_version="v-test",
        metadata={"feed": "unit"},
    )
    return {**doc.model_dump(mode="json"), **extra}


@pytest.fixture
def es(settings: CommonSettings) -> Iterator[Elasticsearch]:
    client = make_client(settings)
    ensure_templates(client, settings.es_docs_alias, settings.es_alerts_alias)
    yield client
    client.close()


def test_root_endpoint_reports_an_8x_build(es: Elasticsearch) -> None:
    info = es.info()
    assert info["version"]["number"].startswith("8.")
    assert info["version"]["build_hash"]
    assert es.ping()  # HEAD /


def test_a_write_gets_the_templates_mappings(es: Elasticsearch, settings: CommonSettings) -> None:
    index = index_for(settings.es_docs_alias, INGESTED)
    es.index(index=index, id="d1", document=scored("d1"), refresh="wait_for")

    props = es.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert props["published_at"]["type"] == "date"
    assert props["ingested_at"]["type"] == "date"
    assert props["scored_at"]["type"] == "date"
    assert props["channel"]["type"] == "keyword"
    assert props["source"]["type"] == "keyword"
    assert props["model_version"]["type"] == "keyword"
    assert props["sentiment"]["properties"]["label"]["type"] == "keyword"
    assert props["text"]["type"] == "text"

    # the types matter to users: range queries on dates, exact terms on keywords, analysed full text
    hits = es.search(
        index=settings.es_docs_alias,
        query={
            "bool": {
                "filter": [
                    {"range": {"published_at": {"gte": "2025-03-13T00:00:00Z", "lt": "2025-03-14T00:00:00Z"}}},
                    {"term": {"sentiment.label": "negative"}},
                    {"term": {"channel": "news"}},
                ],
                "must": [{"match": {"text": "LAUNDERING"}}],  # analysed: case does not matter
            }
        },
    )["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["d1"]


def test_an_unknown_top_level_field_is_refused(es: Elasticsearch, settings: CommonSettings) -> None:
    index = index_for(settings.es_docs_alias, INGESTED)
    with pytest.raises(BadRequestError) as refused:
        es.index(index=index, id="d2", document=scored("d2", surprise_field="drift"))
    assert "strict_dynamic_mapping_exception" in str(refused.value)
    assert es.options(ignore_status=404).get(index=index, id="d2")["found"] is False


def test_documents_land_in_the_month_of_their_own_ingested_at(es: Elasticsearch, settings: CommonSettings) -> None:
    alias = settings.es_docs_alias
    target = index_for(alias, INGESTED)
    assert target == f"{alias}-2025.03"
    es.index(index=target, id="d3", document=scored("d3"), refresh="wait_for")
    # a redelivery (same id, same document time, written later) overwrites instead of landing twice
    es.index(index=index_for(alias, INGESTED), id="d3", document=scored("d3"), refresh="wait_for")

    hits = es.search(index=alias, query={"ids": {"values": ["d3"]}})["hits"]["hits"]
    assert [(h["_index"], h["_id"]) for h in hits] == [(target, "d3")]
    # the index was created by the template: it joined the alias and got the strict mapping
    assert alias in es.indices.get_alias(index=target)[target]["aliases"]
    assert es.indices.get_mapping(index=target)[target]["mappings"]["dynamic"] == "strict"


def test_an_index_written_before_its_template_is_reported_not_used(settings: CommonSettings) -> None:
    """A write that came before the template auto-created this month's alerts index without the alias: installing
    the templates afterwards names the index and stops, instead of leaving alerts out of the alias for good."""
    client = make_client(settings)
    try:
        current = index_for(settings.es_alerts_alias, datetime.now(tz=UTC))
        client.index(index=current, id="early", document={"id": "early", "message": "written first"})
        with pytest.raises(IndexLayoutError, match=f"{current} exists without the alias {settings.es_alerts_alias}"):
            ensure_templates(client, settings.es_docs_alias, settings.es_alerts_alias)
        assert not client.indices.exists_alias(name=settings.es_alerts_alias)
        # once an operator removed it, the next start builds the layout
        client.indices.delete(index=current)
        ensure_templates(client, settings.es_docs_alias, settings.es_alerts_alias)
        assert client.indices.exists_alias(name=settings.es_alerts_alias, index=current)
    finally:
        client.close()

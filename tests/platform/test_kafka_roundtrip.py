"""A raw document survives the trip through the real Kafka broker unchanged (UTF-8 JSON, key = document id)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer, KafkaProducer

from riskstream.settings import CommonSettings
from schemas.records import Entity, RawDocument

pytestmark = pytest.mark.services


def test_raw_document_round_trips_through_kafka(settings: CommonSettings) -> None:
    sent = [
        RawDocument(
            id=f"doc-{i}",
            channel="news" if i % 2 else "customer_service",
            source="test",
            text=f"Bank {i} beats estimates; shares jump — ünïcödé ✓",
            title=f"Headline {i}",
            published_at=datetime(2026, 3, 14, 9, 30, i, tzinfo=UTC),
            entities=[Entity(type="cashtag", value="$ACME")],
            metadata={"feed": "unit", "n": i},
        )
        for i in range(5)
    ]
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        for doc in sent:
            producer.send(settings.topic_raw, key=doc.id.encode(), value=doc.model_dump_json().encode("utf-8")).get(
                timeout=60
            )
        producer.flush(timeout=60)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        settings.topic_raw,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.topic_raw}.reader",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=30_000,
    )
    received: dict[str, tuple[bytes, RawDocument]] = {}
    try:
        for message in consumer:
            doc = RawDocument.model_validate_json(message.value.decode("utf-8"))
            received[doc.id] = (message.key, doc)
            if len(received) == len(sent):
                break
    finally:
        consumer.close()

    assert sorted(received) == sorted(d.id for d in sent)
    for doc in sent:
        key, got = received[doc.id]
        assert key == doc.id.encode()
        assert got == doc  # every field, including unicode text, UTC times, entities and metadata

"""Parsing Kafka records: good documents get defaults; poison messages become dead letters with their reason."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from inference.dlq import Source, dead_letter, parse
from schemas.records import DeadLetter, RawDocument

TS = 1_763_800_000_000  # 2025-11-22


def src(value: bytes | None, offset: int = 5) -> Source:
    return Source(topic="raw", partition=2, offset=offset, timestamp_ms=TS, key=b"k1", value=value)


def test_good_document_without_id_or_ingested_at_gets_stable_defaults() -> None:
    doc = parse(src(json.dumps({"channel": "news", "text": "Shares fell", "feed": "x"}).encode()))
    assert isinstance(doc, RawDocument)
    assert doc.id == "raw-2-5"
    assert doc.ingested_at == datetime.fromtimestamp(TS / 1000, tz=UTC)
    assert doc.metadata == {"feed": "x"}
    again = parse(src(json.dumps({"channel": "news", "text": "Shares fell", "feed": "x"}).encode()))
    assert again == doc  # redelivery parses to the same document (same ES _id and index)


def test_own_id_and_time_are_kept() -> None:
    doc = parse(
        src(
            json.dumps(
                {"id": "abc", "channel": "customer_service", "text": "hi", "ingested_at": "2024-01-02T03:04:05Z"}
            ).encode()
        )
    )
    assert isinstance(doc, RawDocument)
    assert doc.id == "abc" and doc.ingested_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def _reason(value: bytes | None) -> DeadLetter:
    out = parse(src(value))
    assert isinstance(out, DeadLetter)
    assert (out.source_topic, out.source_partition, out.source_offset) == ("raw", 2, 5)
    assert out.stage == "worker"
    return out


def test_invalid_json() -> None:
    letter = _reason(b"{not json")
    assert letter.reason == "invalid_json"
    assert letter.payload == "{not json"


def test_undecodable_bytes_keep_the_payload_in_base64() -> None:
    raw = b"\xff\xfe\x00bad"
    letter = _reason(raw)
    assert letter.reason == "undecodable_bytes"
    assert letter.payload is None and base64.b64decode(letter.payload_b64 or "") == raw


def test_missing_text_is_a_schema_violation_with_the_pydantic_error() -> None:
    letter = _reason(json.dumps({"id": "a", "channel": "news"}).encode())
    assert letter.reason == "schema_violation"
    assert "text" in letter.error and "missing" in letter.error


def test_unknown_channel_is_a_schema_violation() -> None:
    letter = _reason(json.dumps({"id": "a", "channel": "fax", "text": "hello"}).encode())
    assert letter.reason == "schema_violation" and "channel" in letter.error


def test_blank_text_is_empty_text() -> None:
    assert _reason(json.dumps({"id": "a", "channel": "news", "text": "  \n"}).encode()).reason == "empty_text"


def test_json_that_is_not_an_object_and_null_values() -> None:
    assert _reason(b"[1, 2]").reason == "schema_violation"
    assert _reason(None).reason == "invalid_json"


def test_a_dead_letter_too_large_for_its_topic_keeps_the_start_of_its_payload() -> None:
    from schemas.records import fit_dead_letter

    big = json.dumps({"id": "big", "channel": "news", "text": 'say "hi" ' * 150_000}).encode()  # 1.35 MB, quotes
    letter = dead_letter(src(big), "schema_violation", "text: too long")
    body = fit_dead_letter(letter, 900_000)
    assert len(body) <= 900_000
    cut = DeadLetter.model_validate_json(body)
    assert cut.payload_truncated and cut.payload_size == len(big)
    assert cut.payload and len(cut.payload) > 800_000 * 0.8  # most of what fits, not a token prefix
    assert big.decode().startswith(cut.payload)
    assert (cut.reason, cut.source_offset, cut.key) == ("schema_violation", 5, "k1")  # where the whole one is
    # undecodable bytes travel as base64, cut the same way
    raw = b"\xff" * 1_000_000
    letter64 = dead_letter(src(raw), "undecodable_bytes", "not UTF-8")
    cut64 = DeadLetter.model_validate_json(fit_dead_letter(letter64, 500_000))
    assert cut64.payload_truncated and cut64.payload_b64 and len(cut64.payload_b64) > 400_000
    # a letter that fits is sent as it is
    small = dead_letter(src(b"{oops"), "invalid_json", "payload is not JSON")
    assert fit_dead_letter(small, 900_000) == small.model_dump_json().encode()
    assert not DeadLetter.model_validate_json(fit_dead_letter(small, 900_000)).payload_truncated

"""The exported JSON Schema of the raw document enforces the contract for producers not written in Python."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from schemas.jsonschema import schema_for

VALID: dict[str, Any] = {
    "id": "news-1",
    "channel": "news",
    "source": "feed:example",
    "text": "Regulator fines bank over money laundering controls",
    "published_at": "2026-03-14T09:30:00Z",
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = schema_for("raw_document")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_a_valid_document_passes(validator: jsonschema.protocols.Validator) -> None:
    validator.validate(VALID)
    # producers may add fields of their own: they are kept (under metadata), not refused
    validator.validate({**VALID, "ticket_priority": "high"})


@pytest.mark.parametrize(
    "broken",
    [
        {k: v for k, v in VALID.items() if k != "text"},
        {**VALID, "text": ""},
        {**VALID, "text": None},
    ],
    ids=["missing-text", "empty-text", "null-text"],
)
def test_a_document_without_text_is_rejected(validator: jsonschema.protocols.Validator, broken: dict) -> None:
    errors = list(validator.iter_errors(broken))
    assert errors, broken
    assert any("text" in list(e.absolute_path) or "'text'" in e.message for e in errors)


@pytest.mark.parametrize("channel", ["twitter", "News", "", None])
def test_an_unknown_channel_is_rejected(validator: jsonschema.protocols.Validator, channel: object) -> None:
    errors = list(validator.iter_errors({**VALID, "channel": channel}))
    assert errors
    assert any(list(e.absolute_path) == ["channel"] for e in errors)


def test_a_document_without_channel_is_rejected(validator: jsonschema.protocols.Validator) -> None:
    assert list(validator.iter_errors({k: v for k, v in VALID.items() if k != "channel"}))

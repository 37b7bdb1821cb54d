"""HTTP push endpoint for customer-service messages (FastAPI).

``POST /v1/messages`` takes one JSON object, a JSON array, or ``{"messages": [...]}`` with
``Authorization: Bearer <token>``. Answers: 401 (no token), 403 (wrong token), 413 (body over the limit),
400 (not JSON), 422 (schema; ``detail[].loc`` names the field, e.g. ``["messages", 0, "text"]``), 503 (the broker
did not acknowledge every message: retry), 202 ``{"ids": [...], "duplicates": [...]}`` only after Kafka
acknowledged every document. A message whose document (redacted and enriched) is larger than the raw topic takes is
not published: the 202 lists it under ``"rejected": [{"id": ..., "reason": "too_large: ..."}]`` and it goes to the
dead-letter topic (retrying it cannot succeed). ``GET /healthz`` for probes.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from ingest.normalize import message_id
from ingest.pipeline import Ingestor
from ingest.publisher import PublishError
from schemas.records import MAX_TEXT_CHARS, Channel, RawDocument

log = logging.getLogger(__name__)


class PushMessage(BaseModel):
    """One pushed message. Unknown fields are kept (they end up in the document's metadata)."""

    model_config = ConfigDict(extra="allow")

    id: str | int | None = Field(default=None, description="The source's own message id (namespaced by source).")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    channel: Channel = "customer_service"
    source: str = Field(default="push", min_length=1, max_length=200)
    title: str | None = Field(default=None, max_length=2000)
    published_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty")
        return value

    def to_document(self) -> RawDocument:
        extra = dict(self.model_extra or {})
        metadata = {**self.metadata, **extra}
        return RawDocument(
            id=message_id(self.source, self.id),
            channel=self.channel,
            source=self.source,
            text=self.text,
            title=self.title,
            published_at=self.published_at,
            metadata=metadata,
        )


def _error(status: int, detail: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def parse_messages(payload: Any, max_messages: int) -> list[RawDocument]:
    """Object, array or {"messages": [...]} -> validated documents (raises _LocatedValidationError naming each
    failing message and field: the message's own fields, then the document made of it, e.g. an id that comes out
    over 512 bytes once prefixed with its source)."""
    if isinstance(payload, dict) and "messages" in payload and isinstance(payload["messages"], list):
        items: list[Any] = payload["messages"]
        prefix: tuple[Any, ...] = ("messages",)
    elif isinstance(payload, list):
        items = payload
        prefix = ()
    else:
        items = [payload]
        prefix = ("__single__",)
    if len(items) > max_messages:
        raise ValueError(f"too many messages in one request: {len(items)} > {max_messages}")
    if not items:
        raise ValueError("no messages in the request")
    out: list[RawDocument] = []
    errors: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        try:
            out.append(PushMessage.model_validate(item).to_document())
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                loc = list(err["loc"]) if prefix == ("__single__",) else [*prefix, i, *err["loc"]]
                errors.append({"loc": loc, "msg": err["msg"], "type": err["type"]})
    if errors:
        raise _LocatedValidationError(errors)
    return out


class _LocatedValidationError(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} validation error(s)")


def create_app(ingestor: Ingestor, *, token: str, max_body_bytes: int, max_messages: int) -> FastAPI:
    if not token:
        raise ValueError("the push endpoint needs a bearer token (RISKSTREAM_PUSH_TOKEN)")
    app = FastAPI(title="riskstream ingest push", version="1")
    expected = token.encode("utf-8")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "totals": ingestor.totals}

    @app.post("/v1/messages", status_code=202)
    async def post_messages(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return JSONResponse(
                status_code=401, content={"detail": "missing bearer token"}, headers={"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(auth[7:].strip().encode("utf-8"), expected):
            return _error(403, "invalid token")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return _error(413, f"body larger than {max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_body_bytes:
                return _error(413, f"body larger than {max_body_bytes} bytes")
        try:
            payload = orjson.loads(bytes(body))
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body is not valid JSON: {exc}")
        try:
            docs = parse_messages(payload, max_messages)
        except _LocatedValidationError as exc:
            return _error(422, exc.errors)
        except ValueError as exc:
            return _error(422, [{"loc": ["body"], "msg": str(exc), "type": "value_error"}])
        try:
            result = await run_in_threadpool(ingestor.ingest, docs)
        except PublishError as exc:
            log.error("push: %s", exc)
            msg = "the broker did not acknowledge every message; retry (messages that carry an id are idempotent)"
            return _error(503, {"msg": msg, "failed_ids": sorted(exc.failed)})
        content: dict[str, Any] = {"ids": result.ids, "duplicates": result.duplicates}
        if result.rejected:  # accepted request, some messages refused for good (and dead-lettered)
            content["rejected"] = [{"id": k, "reason": v} for k, v in result.rejected.items()]
        return JSONResponse(status_code=202, content=content)

    return app

"""The push endpoint: auth, size limit, validation naming the field, 202 with ids only after the ack."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ingest.pipeline import Ingestor
from ingest.publisher import ListSink
from ingest.push import create_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def client(ingestor: Ingestor, max_body: int = 10_000) -> TestClient:
    return TestClient(create_app(ingestor, token=TOKEN, max_body_bytes=max_body, max_messages=100))


def test_auth(ingestor: Ingestor, sink: ListSink) -> None:
    c = client(ingestor)
    msg = {"id": "1", "text": "hello"}
    assert c.post("/v1/messages", json=msg).status_code == 401
    assert c.post("/v1/messages", json=msg, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert sink.docs == []
    assert c.get("/healthz").json()["status"] == "ok"


def test_body_limit(ingestor: Ingestor, sink: ListSink) -> None:
    c = client(ingestor, max_body=500)
    response = c.post("/v1/messages", json={"text": "x" * 1000}, headers=AUTH)
    assert response.status_code == 413
    assert sink.docs == []


def test_validation_names_the_field(ingestor: Ingestor, sink: ListSink) -> None:
    c = client(ingestor)
    response = c.post("/v1/messages", json={"messages": [{"text": "fine"}, {"id": "2"}]}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["messages", 1, "text"]
    response = c.post("/v1/messages", json={"text": "   "}, headers=AUTH)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["text"]
    response = c.post("/v1/messages", json=[{"text": "a", "channel": "fax"}], headers=AUTH)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == [0, "channel"]
    # an id that comes out over Elasticsearch's 512 bytes once prefixed with its source ("push:" + 600 bytes)
    response = c.post("/v1/messages", json=[{"text": "a"}, {"text": "b", "id": "\u00e9" * 300}], headers=AUTH)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == [1, "id"] and "605 bytes" in error["msg"]
    assert c.post("/v1/messages", content=b"{not json", headers=AUTH).status_code == 400
    assert sink.docs == []  # an invalid batch is refused as a whole


def test_single_array_and_batch_forms_are_redacted_and_acknowledged(ingestor: Ingestor, sink: ListSink) -> None:
    c = client(ingestor)
    single = c.post(
        "/v1/messages",
        headers=AUTH,
        json={
            "id": "T-1",
            "source": "zendesk",
            "text": "My card 4539 1488 0343 6467 was charged twice, call 07700 900123",
            "customer_tier": "gold",
        },
    )
    assert single.status_code == 202
    assert single.json()["ids"] == ["zendesk:T-1"]
    array = c.post("/v1/messages", headers=AUTH, json=[{"text": "a b c"}, {"text": "d e f"}])
    batch = c.post("/v1/messages", headers=AUTH, json={"messages": [{"id": 7, "text": "mail me at a@example.com"}]})
    assert array.status_code == 202 and len(array.json()["ids"]) == 2
    assert batch.json()["ids"] == ["push:7"]
    doc = sink.docs[0]
    assert doc.text == "My card [CARD] was charged twice, call [PHONE]"
    assert doc.redactions == {"CARD": 1, "PHONE": 1}
    assert doc.metadata["customer_tier"] == "gold"
    assert doc.channel == "customer_service" and doc.ingested_at is not None
    # the same message id again is a re-delivery, not a second document
    again = c.post("/v1/messages", headers=AUTH, json={"id": "T-1", "source": "zendesk", "text": "again"})
    assert again.status_code == 202 and again.json() == {"ids": [], "duplicates": ["zendesk:T-1"]}


def test_broker_failure_is_a_503_and_nothing_is_remembered(ingestor: Ingestor, sink: ListSink) -> None:
    c = client(ingestor)
    sink.fail_next = 1
    failed = c.post("/v1/messages", headers=AUTH, json={"id": "9", "text": "please refund me"})
    assert failed.status_code == 503
    assert failed.json()["detail"]["failed_ids"] == ["push:9"]
    retried = c.post("/v1/messages", headers=AUTH, json={"id": "9", "text": "please refund me"})
    assert retried.status_code == 202 and retried.json()["ids"] == ["push:9"]


def test_a_message_too_large_for_the_topic_is_rejected_by_id_and_dead_lettered(
    ingestor: Ingestor, sink: ListSink
) -> None:
    c = client(ingestor, max_body=100_000)
    sink.max_record_bytes = 20_000
    messages = [
        {"id": "ok-1", "text": "please close my account"},
        {"id": "big", "text": "see the attached log " + "x" * 30_000},
        {"id": "ok-2", "text": "thanks"},
    ]
    response = c.post("/v1/messages", headers=AUTH, json={"messages": messages})
    # accepted: the others are published; the large one is named, with a reason a client can act on
    assert response.status_code == 202
    body = response.json()
    assert body["ids"] == ["push:ok-1", "push:ok-2"]
    (rejected,) = body["rejected"]
    assert rejected["id"] == "push:big" and rejected["reason"].startswith("too_large: ")
    assert [(dl.reason, dl.key) for dl in sink.dead] == [("too_large", "push:big")]
    # a retry of the same message is refused again (it was not remembered as published)
    again = c.post("/v1/messages", headers=AUTH, json=messages[1])
    assert again.status_code == 202 and again.json()["rejected"][0]["id"] == "push:big"

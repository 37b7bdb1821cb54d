"""Signatures, the SSRF guard and the delivery queue's retries (real SQLite store, local HTTP transport)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from alerts import store, webhooks
from alerts.rules import load_rule
from alerts.webhooks import AllowList, BlockedTargetError, check_target, sign, verify_signature
from riskstream.db import Database
from schemas.db import AlertDeliveryRow
from schemas.records import Alert

NOW = 1_763_000_000.0


def test_signature_roundtrip_and_tampering() -> None:
    body = b'{"id":"a1"}'
    sig = sign("s3cret", int(NOW), body)
    assert sig.startswith("v1=") and len(sig) == 3 + 64
    assert verify_signature("s3cret", str(int(NOW)), body, sig, now=NOW + 10)
    assert not verify_signature("other", int(NOW), body, sig, now=NOW)
    assert not verify_signature("s3cret", int(NOW), body + b" ", sig, now=NOW)
    assert not verify_signature("s3cret", int(NOW) + 1, body, sig, now=NOW)  # timestamp is signed too
    assert not verify_signature("s3cret", int(NOW), body, sig, tolerance=300, now=NOW + 301)  # replayed late
    assert not verify_signature("s3cret", "not-a-number", body, sig, now=NOW)


def fixed(*addresses: str) -> webhooks.Resolver:
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.5",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:7f00:1::",
    ],
)
def test_ssrf_guard_refuses_internal_ranges(address: str) -> None:
    with pytest.raises(BlockedTargetError):
        check_target("https://hooks.example.com/x", AllowList.parse([]), fixed(address))


def test_ssrf_guard_accepts_public_and_allow_list() -> None:
    assert check_target("https://hooks.example.com/x", AllowList.parse([]), fixed("93.184.216.34")).address
    assert check_target("http://[2606:4700::1]/x", AllowList.parse([]), fixed()).address == "2606:4700::1"
    allow = AllowList.parse(["127.0.0.1/32", "internal.test"])
    assert check_target("http://127.0.0.1:8080/h", allow).port == 8080
    assert check_target("http://internal.test/h", allow, fixed("10.9.9.9")).address == "10.9.9.9"
    # one bad address among several (DNS round-robin with a private entry) is enough to refuse
    with pytest.raises(BlockedTargetError):
        check_target("https://hooks.example.com/x", AllowList.parse([]), fixed("93.184.216.34", "10.0.0.1"))
    with pytest.raises(BlockedTargetError, match="credentials"):
        check_target("http://u:p@127.0.0.1/", allow)
    with pytest.raises(BlockedTargetError):
        check_target("file:///etc/passwd", allow)


def test_rebinding_is_caught_because_every_send_checks_again() -> None:
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url} host={request.headers['Host']}")
        return httpx.Response(204)

    client = httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=False)
    kw = {"alert_id": "a1", "secret": "k", "allow": AllowList.parse([]), "resolver": lambda h, p: next(answers)}
    assert webhooks.send(client, "http://hooks.example.com/x", {"id": "a1"}, **kw) == 204  # type: ignore[arg-type]
    assert seen == ["http://93.184.216.34/x host=hooks.example.com"]  # sent to the checked address, not re-resolved
    with pytest.raises(BlockedTargetError):
        webhooks.send(client, "http://hooks.example.com/x", {"id": "a1"}, **kw)  # type: ignore[arg-type]


def test_send_signs_body_and_refuses_redirects() -> None:
    got: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        got.append(request)
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"Location": "http://169.254.169.254/"})
        return httpx.Response(200)

    client = httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=False)
    allow = AllowList.parse(["127.0.0.1"])
    webhooks.send(client, "http://127.0.0.1:9/ok", {"b": 1, "a": 2}, alert_id="al-1", secret="k", allow=allow)
    req = got[0]
    assert req.headers["X-Riskstream-Alert-Id"] == "al-1"
    assert json.loads(req.content) == {"a": 2, "b": 1}
    assert verify_signature(
        "k", req.headers["X-Riskstream-Timestamp"], req.content, req.headers["X-Riskstream-Signature"]
    )
    with pytest.raises(webhooks.DeliveryError, match="redirect"):
        webhooks.send(client, "http://127.0.0.1:9/moved", {}, alert_id="al-2", secret="k", allow=allow)
    assert len(got) == 2  # the redirect target was never requested


def _alert() -> Alert:
    start = datetime(2026, 11, 20, 10, tzinfo=UTC)
    return Alert(
        id="r1-x-20261120T100000Z",
        rule_id="r1",
        rule_name="burst",
        window_start=start,
        window_end=start + timedelta(minutes=15),
        value=5,
        threshold=3,
        doc_count=5,
    )


def test_delivery_queue_retries_with_backoff_then_fails(tmp_path: Path) -> None:
    exercise_queue(Database(f"sqlite:///{tmp_path / 'rs.db'}"))


@pytest.mark.services
@pytest.mark.postgres
def test_delivery_queue_on_postgres(pg_url: str) -> None:
    exercise_queue(Database(pg_url))


def exercise_queue(db: Database) -> None:
    with db.session() as s:
        store.save_rule(s, load_rule({"id": "r1", "name": "burst", "threshold": 3}), actor="t")
        assert store.enqueue(s, _alert(), ["http://a.test/h", "http://b.test/h"]) == 2
        assert store.enqueue(s, _alert(), ["http://a.test/h"]) == 0  # a replayed alert queues nothing new
        s.commit()
    calls: list[str] = []

    def sender(target: str, payload: dict[str, object], alert_id: str) -> None:
        calls.append(target)
        if "a.test" in target:
            raise webhooks.DeliveryError("HTTP 503")

    policy = store.RetryPolicy(max_attempts=3, base_delay=10)
    t = datetime.now(tz=UTC)
    r1 = store.deliver_due(db.sessions, sender, policy, now=t)
    assert (r1.delivered, r1.retried, r1.failed) == (1, 1, 0)
    assert store.deliver_due(db.sessions, sender, policy, now=t + timedelta(seconds=5)).retried == 0  # not due
    assert store.deliver_due(db.sessions, sender, policy, now=t + timedelta(seconds=11)).retried == 1
    assert store.deliver_due(db.sessions, sender, policy, now=t + timedelta(seconds=30)).retried == 0  # 20 s backoff
    r4 = store.deliver_due(db.sessions, sender, policy, now=t + timedelta(seconds=32))
    assert r4.failed == 1
    with db.session() as s:
        rows = {r.target: r for r in s.query(AlertDeliveryRow)}
    assert rows["http://b.test/h"].status == "delivered" and rows["http://b.test/h"].attempts == 1
    assert rows["http://a.test/h"].status == "failed" and rows["http://a.test/h"].attempts == 3
    assert rows["http://a.test/h"].last_error == "DeliveryError: HTTP 503"
    assert calls.count("http://a.test/h") == 3
    db.dispose()


def test_blocked_target_fails_at_once(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'rs.db'}")
    with db.session() as s:
        store.save_rule(s, load_rule({"id": "r1", "name": "burst", "threshold": 3}), actor="t")
        store.enqueue(s, _alert(), ["http://10.0.0.1/h"])
        s.commit()

    def sender(target: str, payload: dict[str, object], alert_id: str) -> None:
        webhooks.check_target(target, AllowList.parse([]))

    rep = store.deliver_due(db.sessions, sender, store.RetryPolicy(), permanent=(BlockedTargetError,))
    assert rep.failed == 1
    with db.session() as s:
        row = s.query(AlertDeliveryRow).one()
    assert row.status == "failed" and row.last_error is not None and "refused" in row.last_error
    db.dispose()

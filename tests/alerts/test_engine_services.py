"""End to end on the real stack: scored documents on Kafka -> the real faust engine (a subprocess) -> an alert in
Elasticsearch and on the alerts topic, a signed webhook received on 127.0.0.1 (allow-listed), a failing target
retried from the store, and a malformed message dead-lettered."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from pydantic import SecretStr
from sqlalchemy import select

from alerts import store
from alerts.rules import alert_id, load_rule
from alerts.settings import AlertSettings
from alerts.webhooks import verify_signature
from riskstream.db import Database
from riskstream.es import make_client
from riskstream.settings import CommonSettings
from schemas.db import AlertDeliveryRow
from tests.alerts.helpers import scored

pytestmark = pytest.mark.services

SECRET = "test-webhook-secret"


class Receiver:
    """A tiny webhook receiver on 127.0.0.1: /ok answers 204; /flaky answers 503 once, then 204."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.flaky_failures = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.path == "/flaky" and outer.flaky_failures == 0:
                    outer.flaky_failures += 1
                    self.send_response(503)
                else:
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def env_for(settings: AlertSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    return {**env, **settings.to_env()}


def wait_for(what: str, check: Callable[[], Any], timeout: float, proc: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc.poll() is not None:
            raise AssertionError(f"engine exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def engine_settings(settings: CommonSettings, tmp_path: Path) -> AlertSettings:
    return AlertSettings(
        **(settings.model_dump() | {"log_level_libraries": "INFO"}),  # faust's rebalance and recovery, in the log
        alerts_app_id=f"rs-alerts-test-{uuid.uuid4().hex[:8]}",
        alerts_lateness=0,
        alerts_idle_close=1,
        alerts_rules_refresh=2,
        alerts_gap_check=1,
        webhook_secret=SecretStr(SECRET),
        webhook_allow=["127.0.0.1/32"],
        webhook_poll=0.5,
        webhook_backoff=0.5,
        webhook_max_attempts=4,
        webhook_timeout=3,
    )


@pytest.fixture
def engine_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "engine.log"
    yield path
    if path.exists():  # shown by pytest only when the test fails
        print(path.read_text()[-15000:])


def test_scored_docs_fire_an_alert_and_signed_webhooks(engine_settings: AlertSettings, engine_log: Path) -> None:
    s = engine_settings
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    admin.create_topics([NewTopic(t, 1, 1) for t in (s.topic_scored, s.topic_alerts, s.topic_dlq)])
    admin.close()

    with Receiver() as receiver:
        base = f"http://127.0.0.1:{receiver.port}"
        rule = load_rule(
            {
                "id": "acme-negative",
                "name": "Negative news on ACME",
                "channel": "news",
                "window": "15m",
                "metric": "negative_share",
                "group_by": ["entity"],
                "threshold": 0.6,
                "min_docs": 3,
                "severity": "critical",
                "webhooks": [f"{base}/ok", f"{base}/flaky"],
            }
        )
        db = Database(s.db_url)
        with db.session() as session:
            store.save_rule(session, rule, actor="test")
            session.commit()

        start = datetime.now(tz=UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
        docs = [
            scored("n1", start + timedelta(minutes=1)),
            scored("n2", start + timedelta(minutes=2)),
            scored("n3", start + timedelta(minutes=3)),
            scored("p1", start + timedelta(minutes=4), sentiment="positive"),
            scored("b1", start + timedelta(minutes=5), entities=("$BETA",), sentiment="positive"),
        ]
        producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all")
        for doc in docs:
            producer.send(s.topic_scored, key=doc.id.encode(), value=doc.model_dump_json().encode())
        producer.send(s.topic_scored, key=b"bad", value=b"{not json")
        producer.flush()
        producer.close()

        with engine_log.open("wb") as log:
            proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "riskstream"), "alerts", "run"],
                env=env_for(s),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            expected_id = alert_id("acme-negative", {"entity": "$ACME"}, start)
            es = make_client(s)

            def alert_in_es() -> Any:
                es.indices.refresh(index=s.es_alerts_alias, ignore_unavailable=True, allow_no_indices=True)
                res = es.search(index=s.es_alerts_alias, query={"match_all": {}}, ignore_unavailable=True)
                return res["hits"]["hits"]

            hits = wait_for("the alert in Elasticsearch", alert_in_es, 150, proc)
            assert [h["_id"] for h in hits] == [expected_id]  # $BETA stayed quiet
            alert = hits[0]["_source"]
            assert alert["value"] == pytest.approx(0.75) and alert["doc_count"] == 4
            assert alert["severity"] == "critical" and alert["group"] == {"entity": "$ACME"}
            assert set(alert["sample_doc_ids"]) == {"n1", "n2", "n3", "p1"}

            def delivered() -> bool:
                with db.session() as session:
                    rows = session.scalars(select(AlertDeliveryRow)).all()
                    return len(rows) == 2 and all(r.status == "delivered" for r in rows)

            wait_for("both webhooks delivered", delivered, 60, proc)
        finally:
            stop(proc)

    ok = [r for r in receiver.requests if r["path"] == "/ok"]
    flaky = [r for r in receiver.requests if r["path"] == "/flaky"]
    assert len(ok) == 1 and len(flaky) == 2  # the flaky target was retried from the store once
    for req in ok + flaky:
        h = {k.lower(): v for k, v in req["headers"].items()}
        assert h["x-riskstream-alert-id"] == expected_id
        assert verify_signature(SECRET, h["x-riskstream-timestamp"], req["body"], h["x-riskstream-signature"])
        assert json.loads(req["body"])["id"] == expected_id
    assert not verify_signature("wrong-secret", h["x-riskstream-timestamp"], req["body"], h["x-riskstream-signature"])
    with db.session() as session:
        rows = {r.target.rsplit("/", 1)[1]: r for r in session.scalars(select(AlertDeliveryRow))}
    assert rows["ok"].attempts == 1
    assert rows["flaky"].attempts == 2 and rows["flaky"].last_error is None
    db.dispose()

    consumer = KafkaConsumer(
        s.topic_alerts, s.topic_dlq, bootstrap_servers=s.kafka_bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=5000, enable_auto_commit=False,
    )  # fmt: skip
    by_topic: dict[str, list[Any]] = {}
    for msg in consumer:
        by_topic.setdefault(msg.topic, []).append(msg)
    consumer.close()
    assert [m.key.decode() for m in by_topic[s.topic_alerts]] == [expected_id]
    (letter,) = by_topic[s.topic_dlq]
    dead = json.loads(letter.value)
    assert dead["stage"] == "alerts" and dead["reason"] == "invalid_json" and dead["payload"] == "{not json"


class RestartScenario:
    """A scored topic, the rule "three documents in a 15-minute window", and an engine that can be (re)started.

    Windows close on event time only (``alerts_idle_close`` is long), so what an engine counts is decided by the
    documents alone. ``start`` is the opening of the window the tests fill.
    """

    def __init__(self, settings: AlertSettings, log: Path) -> None:
        self.s = settings.model_copy(update={"alerts_idle_close": 600.0})
        self.log = log
        admin = KafkaAdminClient(bootstrap_servers=self.s.kafka_bootstrap)
        admin.create_topics([NewTopic(t, 1, 1) for t in (self.s.topic_scored, self.s.topic_alerts, self.s.topic_dlq)])
        admin.close()
        db = Database(self.s.db_url)
        rule = load_rule({"id": "three", "name": "Three in a window", "window": "15m", "threshold": 3, "min_docs": 3})
        with db.session() as session:
            store.save_rule(session, rule, actor="test")
            session.commit()
        db.dispose()
        self.start = datetime.now(tz=UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
        self.producer = KafkaProducer(bootstrap_servers=self.s.kafka_bootstrap, acks="all")
        self.es = make_client(self.s)

    def doc(self, doc_id: str, minutes: int) -> Any:
        return scored(doc_id, self.start + timedelta(minutes=minutes))

    def publish(self, *docs: Any) -> None:
        for doc in docs:
            self.producer.send(self.s.topic_scored, key=doc.id.encode(), value=doc.model_dump_json().encode())
        self.producer.flush()

    def alerts(self) -> list[Any]:
        self.es.indices.refresh(index=self.s.es_alerts_alias, ignore_unavailable=True, allow_no_indices=True)
        res = self.es.search(index=self.s.es_alerts_alias, query={"match_all": {}}, ignore_unavailable=True)
        return list(res["hits"]["hits"])

    def engine(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [str(Path(sys.executable).parent / "riskstream"), "alerts", "run"],
                env=env_for(self.s),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run_until_committed(self, offset: int) -> None:
        """Run an engine until it committed ``offset`` on the scored topic, then stop it (SIGTERM)."""
        proc = self.engine()
        try:
            # faust flushes the table's changelog before it commits the offsets of the documents that changed it
            wait_for(f"offset {offset} committed", lambda: _committed(self.s) >= offset, 150, proc)
        finally:
            stop(proc)

    def run_until_alert(self) -> Any:
        """Run an engine until the alert of the window at ``start`` is searchable; returns that one hit."""
        proc = self.engine()
        try:
            hits = wait_for("the alert after the restart", self.alerts, 150, proc)
        finally:
            stop(proc)
        (hit,) = hits
        assert hit["_id"] == alert_id("three", {}, self.start)
        return hit["_source"]

    def close(self) -> None:
        self.producer.close()
        self.es.close()


@pytest.fixture
def scenario(engine_settings: AlertSettings, engine_log: Path) -> Iterator[RestartScenario]:
    value = RestartScenario(engine_settings, engine_log)
    yield value
    value.close()


def test_open_windows_survive_an_engine_restart(scenario: RestartScenario) -> None:
    """Two documents before a restart and one after fill one window: the faust table restored the count."""
    scenario.publish(scenario.doc("a", 1), scenario.doc("b", 2))
    scenario.run_until_committed(2)
    assert scenario.alerts() == []
    # the third document of the window, then one far later that moves event time past the window's end
    scenario.publish(scenario.doc("c", 3), scenario.doc("z", 120))
    alert = scenario.run_until_alert()
    assert alert["doc_count"] == 3 and set(alert["sample_doc_ids"]) == {"a", "b", "c"}


def test_documents_delivered_again_after_a_restart_are_counted_once(scenario: RestartScenario) -> None:
    """The group's offset moves back after a and b were counted (as when a rebalance replays records): the ledger
    in the state table skips them, so the window holds three documents, not five."""
    scenario.publish(scenario.doc("a", 1), scenario.doc("b", 2))
    scenario.run_until_committed(2)
    _commit(scenario.s, 0)
    scenario.publish(scenario.doc("c", 3), scenario.doc("z", 120))
    alert = scenario.run_until_alert()
    assert alert["doc_count"] == 3 and sorted(alert["sample_doc_ids"]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("committed", "expected_in_log"),
    [
        (3, ["offsets 2-2 were not delivered by the stream: 1 record(s) read back"]),
        (
            4,
            [
                "offsets 2-3 were not delivered by the stream: 2 record(s) read back",
                "(the group had committed offset 4)",
            ],
        ),
    ],
    ids=["past-c", "past-c-and-z"],
)
def test_records_the_stream_skips_are_read_back_and_counted(
    scenario: RestartScenario, committed: int, expected_in_log: list[str]
) -> None:
    """The group's offset moves past records before the restart (as faust does when it drops a record fetched
    during recovery). Past c only: the next record, z, or the gap check, whichever comes first, reveals the gap.
    Past c and z, the last records of the partition: no later record comes, so only the gap check, comparing the
    ledger with the committed offset, finds them. Either way they are read back and complete the window."""
    scenario.publish(scenario.doc("a", 1), scenario.doc("b", 2))
    scenario.run_until_committed(2)
    scenario.publish(scenario.doc("c", 3), scenario.doc("z", 120))  # offsets 2 and 3
    _commit(scenario.s, committed)
    alert = scenario.run_until_alert()
    assert alert["doc_count"] == 3 and set(alert["sample_doc_ids"]) == {"a", "b", "c"}
    log = scenario.log.read_text()
    for expected in expected_in_log:
        assert expected in log


def _commit(s: AlertSettings, offset: int) -> None:
    """Set the engine's committed offset on the scored topic (no engine is running)."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=s.alerts_app_id, enable_auto_commit=False)
    try:
        tp = TopicPartition(s.topic_scored, 0)
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1)})
    finally:
        consumer.close()


def _committed(s: AlertSettings) -> int:
    """Offsets the engine's consumer group committed on the scored topic."""
    from kafka import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=s.alerts_app_id, enable_auto_commit=False)
    try:
        return int(consumer.committed(TopicPartition(s.topic_scored, 0)) or 0)
    finally:
        consumer.close()


CRASHING_ENGINE = """
import alerts.engine
from alerts.rules import Evaluator


class Failing(Evaluator):
    def add(self, doc):
        raise TypeError(f"injected failure while counting {doc.id}")


alerts.engine.Evaluator = Failing  # a bug in the agent, injected; Kafka, the table and faust are real
from riskstream.cli import main

main(["alerts", "run"])
"""


def test_the_engine_creates_its_topics_and_exits_non_zero_when_its_agent_crashes(
    engine_settings: AlertSettings, engine_log: Path
) -> None:
    """Nothing created the topics beforehand: the engine does, with the configured partitions, before faust starts.
    Then a failure inside the agent stops the process with a non-zero exit (for its supervisor to restart it)
    instead of leaving it running with nothing consuming."""
    s = engine_settings.model_copy(update={"kafka_topic_partitions": 2})
    with engine_log.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHING_ENGINE],
            env=env_for(s),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
        wanted = {s.topic_scored, s.topic_alerts, s.topic_dlq}
        wait_for("the engine's topics", lambda: wanted <= set(admin.list_topics()), 90, proc)
        described = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(sorted(wanted))}
        admin.close()
        assert described == dict.fromkeys(wanted, 2)
        # a new engine starts at the earliest offset, so the document reaches it whenever it joins the group
        producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all")
        doc = scored("boom", datetime.now(tz=UTC))
        producer.send(s.topic_scored, key=doc.id.encode(), value=doc.model_dump_json().encode())
        producer.flush()
        producer.close()
        code = proc.wait(timeout=180)
    finally:
        stop(proc)
    assert code != 0
    assert "Crashed reason=TypeError('injected failure while counting boom')" in engine_log.read_text()

"""End to end on the real stack: scored documents on Kafka -> the real faust engine (a subprocess) -> an alert in
Elasticsearch and on the alerts topic, a signed webhook received on 127.0.0.1 (allow-listed), a failing target
retried from the store, and a malformed message dead-lettered."""

from __future__ import annotations

import contextlib
import json
import os
import re
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
from elasticsearch import ApiError
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from pydantic import SecretStr
from sqlalchemy import select

from alerts import store
from alerts.engine import EXIT_STALLED
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


class Supervised:
    """An engine process under a supervisor's policy, as under ``riskstream demo`` or systemd: restarted when it
    exits with :data:`EXIT_STALLED` (its stream stopped delivering, see alerts/stall.py), at most ``max_restarts``
    times; any other exit is final. Output is appended to ``log``."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, *, max_restarts: int = 2) -> None:
        self.args, self.env, self.log, self.max_restarts = args, env, log, max_restarts
        self.restarts = 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def exited(self) -> int | None:
        """The final exit code, or None while it runs (restarting it first if it exited to be restarted)."""
        code = self.proc.poll()
        if code == EXIT_STALLED and self.restarts < self.max_restarts:
            self.restarts += 1
            self.proc = self._start()
            return None
        return code

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.exited()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the engine did not exit within {timeout}s")
            time.sleep(0.5)
        return code

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_for(what: str, check: Callable[[], Any], timeout: float, engine: Supervised) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if (code := engine.exited()) is not None:
            raise AssertionError(f"engine exited ({code}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def search_alerts(es: Any, alias: str) -> list[Any]:
    """The alerts searchable under ``alias``; none while the engine is still creating its first index (a search
    then answers 503 until the index's shard has started)."""
    try:
        es.indices.refresh(index=alias, ignore_unavailable=True, allow_no_indices=True)
        res = es.search(index=alias, query={"match_all": {}}, ignore_unavailable=True)
    except ApiError as exc:
        if exc.meta.status == 503:
            return []
        raise
    return list(res["hits"]["hits"])


RISKSTREAM = [str(Path(sys.executable).parent / "riskstream"), "alerts", "run"]


@pytest.fixture
def engine_settings(settings: CommonSettings, tmp_path: Path) -> AlertSettings:
    return AlertSettings(
        # the engine's per-record decisions (debug) and faust's rebalance and recovery (info), in the log
        **(settings.model_dump() | {"log_level": "DEBUG", "log_level_libraries": "INFO"}),
        alerts_app_id=f"rs-alerts-test-{uuid.uuid4().hex[:8]}",
        alerts_lateness=0,
        alerts_idle_close=1,
        alerts_rules_refresh=2,
        alerts_gap_check=1,
        alerts_stall_timeout=15,
        webhook_secret=SecretStr(SECRET),
        webhook_allow=["127.0.0.1/32"],
        webhook_poll=0.5,
        webhook_backoff=0.5,
        webhook_max_attempts=4,
        webhook_timeout=3,
    )


# connection chatter of the clients, dropped from the log printed for a failed test so that faust's and the
# engine's own lines fit in what a CI report shows
_CHATTER = re.compile(
    r"KafkaTCPTransport|KafkaConnection|Bootstrap|bootstrap|metadata refresh loop|IO loop |Updated metadata|"
    r"Initializing connection|Attempting bootstrap|(HEAD|GET|PUT|POST) http\S+ \[status:2\d\d"
)


@pytest.fixture
def engine_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "engine.log"
    yield path
    if path.exists():  # shown by pytest only when the test fails (the whole file stays in the test's tmp_path)
        lines = [line for line in path.read_text(errors="replace").splitlines() if not _CHATTER.search(line)]
        print(f"{path} without connection chatter:")
        print("\n".join(lines)[-15000:])


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

        proc = Supervised(RISKSTREAM, env_for(s), engine_log)
        try:
            expected_id = alert_id("acme-negative", {"entity": "$ACME"}, start)
            es = make_client(s)

            def alert_in_es() -> Any:
                return search_alerts(es, s.es_alerts_alias)

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
            proc.stop()

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
        return search_alerts(self.es, self.s.es_alerts_alias)

    def engine(self) -> Supervised:
        return Supervised(RISKSTREAM, env_for(self.s), self.log)

    def run_until_committed(self, offset: int) -> None:
        """Run an engine until it committed ``offset`` on the scored topic, then stop it (SIGTERM)."""
        proc = self.engine()
        try:
            # faust flushes the table's changelog before it commits the offsets of the documents that changed it
            wait_for(f"offset {offset} committed", lambda: _committed(self.s) >= offset, 150, proc)
        finally:
            proc.stop()

    def run_until_alert(self) -> Any:
        """Run an engine until the alert of the window at ``start`` is searchable; returns that one hit."""
        proc = self.engine()
        try:
            hits = wait_for("the alert after the restart", self.alerts, 150, proc)
        finally:
            proc.stop()
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
import asyncio
import os

import alerts.engine
import faust.transport.consumer as consumer
from alerts.rules import Evaluator


class Failing(Evaluator):
    def add(self, doc):
        raise TypeError(f"injected failure while counting {doc.id}")


async def hanging_wait_empty(self):
    print("injected: faust's shutdown hangs waiting for the streams", flush=True)
    await asyncio.sleep(3600)


alerts.engine.Evaluator = Failing  # a bug in the agent, injected; Kafka, the table and faust are real
if os.environ["HANG_ON_STOP"] == "1":  # the hang seen now and then after a crash, made certain
    consumer.Consumer.wait_empty = hanging_wait_empty
from riskstream.cli import main

main(["alerts", "run"])
"""


@pytest.mark.parametrize("hang_on_stop", [False, True], ids=["faust-stops", "faust-stop-hangs"])
def test_the_engine_creates_its_topics_and_exits_non_zero_when_its_agent_crashes(
    engine_settings: AlertSettings, engine_log: Path, hang_on_stop: bool
) -> None:
    """Nothing created the topics beforehand: the engine does, with the configured partitions, before faust starts.
    Then a failure inside the agent stops the process with a non-zero exit (for its supervisor to restart it)
    instead of leaving it running with nothing consuming, even when faust's own shutdown hangs."""
    s = engine_settings.model_copy(update={"kafka_topic_partitions": 2, "alerts_stop_timeout": 5})
    env = env_for(s) | {"HANG_ON_STOP": "1" if hang_on_stop else "0"}
    proc = Supervised([sys.executable, "-c", CRASHING_ENGINE], env, engine_log)
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
        proc.stop()
    assert code == 1  # a crash, not a stall (EXIT_STALLED)
    text = engine_log.read_text()
    assert "Crashed reason=TypeError('injected failure while counting boom')" in text
    if hang_on_stop:
        assert "injected: faust's shutdown hangs" in text
        assert "the engine did not stop within 5s" in text


# The stall faust shows now and then, made certain: the stream loses the scored records it fetches (aiokafka's
# position moves past them, the agent never sees them) until the engine seeks back, or for good.
LOSING_ENGINE = """
import os

import faust.transport.consumer as consumer

getmany, seek = consumer.Consumer.getmany, consumer.Consumer.seek
losing = {"on": True, "forever": os.environ["LOSE_FOREVER"] == "1", "lost": 0}


async def lossy_getmany(self, timeout):
    async for tp, message in getmany(self, timeout):
        if losing["on"] and tp.topic.endswith(".docs.scored"):
            losing["lost"] += 1
            continue
        yield tp, message


async def counted_seek(self, partition, offset):
    print(f"injected: {losing['lost']} record(s) lost before a seek to {offset}", flush=True)
    losing["on"] = losing["forever"]
    await seek(self, partition, offset)


consumer.Consumer.getmany = lossy_getmany
consumer.Consumer.seek = counted_seek
from riskstream.cli import main

main(["alerts", "run"])
"""


def test_a_stream_that_loses_what_it_fetched_is_sent_back_to_the_records(scenario: RestartScenario) -> None:
    """Records wait, the stream delivers none: after the stall timeout the engine seeks back to the next offset to
    count, the records come again, and the window fires, in the same process."""
    scenario.s = scenario.s.model_copy(update={"alerts_stall_timeout": 3})
    scenario.publish(scenario.doc("a", 1), scenario.doc("b", 2), scenario.doc("c", 3), scenario.doc("z", 120))
    proc = Supervised(
        [sys.executable, "-c", LOSING_ENGINE], {**env_for(scenario.s), "LOSE_FOREVER": "0"}, scenario.log,
        max_restarts=0,
    )  # fmt: skip
    try:
        hits = wait_for("the alert after the seek", scenario.alerts, 150, proc)
    finally:
        proc.stop()
    (hit,) = hits
    assert hit["_source"]["doc_count"] == 3 and sorted(hit["_source"]["sample_doc_ids"]) == ["a", "b", "c"]
    log = scenario.log.read_text()
    assert "injected: 4 record(s) lost before a seek to 0" in log
    assert "the stream stopped delivering records: " in log and "4 record(s) from offset 0 waiting" in log
    assert "Seeking back to the next offset to count" in log
    assert "Exiting for a restart" not in log


def test_a_stream_that_stays_stalled_after_the_seek_exits_for_a_restart(scenario: RestartScenario) -> None:
    """The seek does not help: the second stall at the same offset ends the process with code 75, which a
    supervisor answers with a restart (the engine under `riskstream demo` or systemd)."""
    scenario.s = scenario.s.model_copy(update={"alerts_stall_timeout": 3})
    scenario.publish(scenario.doc("a", 1), scenario.doc("b", 2))
    proc = Supervised(
        [sys.executable, "-c", LOSING_ENGINE], {**env_for(scenario.s), "LOSE_FOREVER": "1"}, scenario.log,
        max_restarts=0,
    )  # fmt: skip
    try:
        code = proc.wait(timeout=150)
    finally:
        proc.stop()
    assert code == EXIT_STALLED
    log = scenario.log.read_text()
    assert "Seeking back to the next offset to count" in log
    assert "the stream stopped delivering records again after a seek: " in log
    assert "2 record(s) from offset 0 waiting" in log
    assert scenario.alerts() == []

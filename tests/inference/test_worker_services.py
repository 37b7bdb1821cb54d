"""The worker against a real Kafka broker and a real Elasticsearch node (fixtures from tests/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from inference.device import place
from inference.engine import Engine
from inference.settings import WorkerSettings
from inference.worker import Worker
from riskstream.hardware import has_native_bf16
from riskstream.modeling import load_bundle
from riskstream.settings import CommonSettings
from tests.inference.helpers import (
    TcpProxy,
    committed_ids,
    create_topics,
    es_count,
    es_docs,
    good_docs,
    produce,
    read_records,
    read_topic,
    register,
    wait_for_records,
    wait_until,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]

BundleFactory = Callable[[str, int], tuple[Path, str]]


@pytest.fixture
def worker_settings(settings: CommonSettings) -> WorkerSettings:
    create_topics(settings)
    data = {name: getattr(settings, name) for name in type(settings).model_fields}
    return WorkerSettings(
        **data,
        group_id=f"g-{settings.topic_raw}",
        max_wait_ms=100,
        hotswap_interval_s=0.5,
        torch_threads=2,
        es_retry_max_s=2.0,
    )


@pytest.fixture(scope="module")
def engine_v1(bundle_v1: tuple[Path, str]) -> Engine:
    return Engine(load_bundle(bundle_v1[0]), place("cpu", "fp32", 2))


class Running:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "worker did not stop"
        assert self.error is None, f"worker failed: {self.error!r}"


@pytest.fixture
def start_worker(worker_settings: WorkerSettings) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(settings: WorkerSettings | None = None, **kwargs: Any) -> Running:
        r = Running(Worker(settings or worker_settings, **kwargs))
        running.append(r)
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.worker.stop()
            r.thread.join(timeout=60)


def test_good_documents_land_once_and_poison_goes_to_the_dlq(
    worker_settings: WorkerSettings, bundle_v1: tuple[Path, str], start_worker: Callable[..., Running]
) -> None:
    register(worker_settings, "test-v1", *bundle_v1)
    good = good_docs("good", 24)
    crowd = {"type": "cashtag", "value": "$A"}
    no_id = {"channel": "news", "text": "A document without an id"}
    poison = [
        ("p-json", b"{this is not json"),
        ("p-bytes", b"\xff\xfe\xfa not utf-8"),
        ("p-notext", json.dumps({"id": "p-notext", "channel": "news"}).encode()),
        ("p-channel", json.dumps({"id": "p-channel", "channel": "fax", "text": "hello"}).encode()),
        ("p-blank", json.dumps({"id": "p-blank", "channel": "news", "text": "   "}).encode()),
        # valid, but Elasticsearch refuses it: more nested entities than an index allows (10,000)
        ("p-es", json.dumps({"id": "p-es", "channel": "news", "text": "$A", "entities": [crowd] * 10_001}).encode()),
    ]
    produce(worker_settings, good[:12] + poison + [(None, json.dumps(no_id).encode())] + good[12:])
    run = start_worker(engine=None)
    wait_until(lambda: es_count(worker_settings) >= 25, 240, "25 documents in ES")
    dlq = wait_for_records(worker_settings, worker_settings.topic_dlq, 6, 60)
    run.stop()

    docs = es_docs(worker_settings)
    ids = Counter(d["_id"] for d in docs)
    assert len(docs) == 25 and all(n == 1 for n in ids.values())
    assert {f"good-{i}" for i in range(24)} <= set(ids)
    (derived,) = [i for i in ids if not i.startswith("good-")]
    assert derived.startswith(f"{worker_settings.topic_raw}-")  # topic-partition-offset
    for d in docs:
        assert d["sentiment"]["label"] in ("negative", "neutral", "positive")
        assert d["topic"]["label"]
        assert d["model_version"] == "test-v1"
        assert d["_index"].startswith(worker_settings.es_docs_alias + "-")
    reasons = {letter["key"]: letter["reason"] for letter in dlq}
    assert reasons == {
        "p-json": "invalid_json",
        "p-bytes": "undecodable_bytes",
        "p-notext": "schema_violation",
        "p-channel": "schema_violation",
        "p-blank": "empty_text",
        "p-es": "es_rejected",
    }
    for letter in dlq:
        assert letter["source_topic"] == worker_settings.topic_raw and letter["source_offset"] >= 0
        assert letter["payload"] or letter["payload_b64"]
    assert "nested documents" in next(letter["error"] for letter in dlq if letter["key"] == "p-es")
    scored = read_topic(worker_settings, worker_settings.topic_scored, 3)
    assert {s["id"] for s in scored} == set(ids)
    # what a downstream consumer reads is what Elasticsearch holds (one serialisation for both). The scored topic is
    # at-least-once: a rebalance right after start can score a batch twice. Records are keyed by id, so an id's
    # records share a partition and come in order; its last one is the one Elasticsearch kept (index overwrites).
    in_es = {d["_id"]: {k: v for k, v in d.items() if k not in ("_id", "_index")} for d in docs}
    last = {s["id"]: s for s in scored}
    assert last == in_es
    # what the Prometheus endpoint shows an operator: documents by channel (13 news with the id-less one, 12
    # customer service; a rebalance may score a batch twice), tokens, failures by reason, the model and its precision
    metric = run.worker.metrics.registry.get_sample_value
    assert (metric("riskstream_worker_documents_total", {"channel": "news"}) or 0) >= 13
    assert (metric("riskstream_worker_documents_total", {"channel": "customer_service"}) or 0) >= 12
    assert (metric("riskstream_worker_tokens_total") or 0) > 0
    for reason, n in Counter(reasons.values()).items():
        assert (metric("riskstream_worker_failures_total", {"reason": reason}) or 0) >= n, reason
    served = {"version": "test-v1", "backend": "torch", "device": "cpu"}
    served["precision"] = "bf16" if has_native_bf16() else "fp32"  # auto: bf16 only where the CPU has it natively
    served["cpu_fusion"] = "gelu+add" if has_native_bf16() else "gelu"  # the lean encoder's fused kernels
    assert metric("riskstream_worker_model_info", served) == 1.0
    # the process's own CPU and memory, for telling a CPU-bound worker and sizing its container
    assert (metric("process_cpu_seconds_total") or 0) > 0
    assert (metric("process_resident_memory_bytes") or 0) > 100e6  # a loaded model and torch: well over 100 MB


def test_sigkill_mid_stream_then_restart_leaves_every_document_once(
    worker_settings: WorkerSettings, bundle_v1: tuple[Path, str], tmp_path: Path
) -> None:
    register(worker_settings, "test-v1", *bundle_v1)
    n = 300
    docs_in = good_docs("kill", n)
    produce(worker_settings, docs_in[:120])
    env = dict(os.environ, **worker_settings.to_env(), HF_HUB_OFFLINE="1")
    env["RISKSTREAM_MAX_BATCH_MESSAGES"] = "16"  # many commits, so the kill lands between and inside batches
    env["RISKSTREAM_PIPELINE_DEPTH"] = "3"  # and up to four batches scored or written but not yet committed
    cmd = [str(Path(sys.executable).parent / "riskstream"), "worker"]
    log = (tmp_path / "worker.log").open("w")
    first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: es_count(worker_settings) >= 16, 240, "the first worker to index some documents", interval=0.2
        )
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        # the stream goes on while no worker runs
        produce(worker_settings, docs_in[120:])
        second = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: es_count(worker_settings) >= n, 300, f"all {n} documents after the restart")
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0  # SIGTERM drains, commits and exits 0
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()
    docs = es_docs(worker_settings)
    assert sorted(d["_id"] for d in docs) == sorted(f"kill-{i}" for i in range(n))  # each exactly once


def test_hot_swap_between_batches_and_corrupt_champion_refused(
    worker_settings: WorkerSettings,
    bundle_factory: BundleFactory,
    start_worker: Callable[..., Running],
    tmp_path: Path,
) -> None:
    v1 = bundle_factory("swap-v1", 1)
    v2 = bundle_factory("swap-v2", 2)
    register(worker_settings, "swap-v1", *v1)
    run = start_worker()
    produce(worker_settings, good_docs("before", 10))
    wait_until(lambda: es_count(worker_settings) >= 10, 120, "the first documents")
    register(worker_settings, "swap-v2", *v2)
    wait_until(
        lambda: run.worker.watcher is not None and run.worker.watcher.current[0] == "swap-v2",
        60,
        "the watcher to load swap-v2",
    )
    produce(worker_settings, good_docs("after", 10))
    wait_until(lambda: es_count(worker_settings) >= 20, 120, "the later documents")
    # a corrupt champion (digest does not match the registry's) is refused; serving goes on with v2
    register(worker_settings, "swap-v3", v2[0], "f" * 64)
    wait_until(lambda: run.worker.metrics.failures.labels(reason="model_refused")._value.get() >= 1, 30, "the refusal")
    produce(worker_settings, good_docs("late", 5))
    wait_until(lambda: es_count(worker_settings) >= 25, 120, "the last documents")
    run.stop()
    docs = es_docs(worker_settings)
    by_prefix: dict[str, set[str]] = {}
    for d in docs:
        by_prefix.setdefault(d["id"].split("-")[0], set()).add(d["model_version"])
    assert by_prefix == {"before": {"swap-v1"}, "after": {"swap-v2"}, "late": {"swap-v2"}}
    assert run.worker.engine is not None and run.worker.engine.version == "swap-v2"


@contextmanager
def stalled_behind_blocked_es(
    settings: WorkerSettings,
    engine: Engine,
    start_worker: Callable[..., Running],
    *,
    before: int,
    held: int,
    bulk_timeout_s: float,
) -> Iterator[tuple[Running, TcpProxy]]:
    """A worker whose Elasticsearch sits behind a proxy: ``before`` documents written, then the proxy blocked and
    ``held`` more produced, until the worker holds them as a stalled batch. Yields (running worker, proxy)."""
    from urllib.parse import urlparse

    es = urlparse(settings.es_url)
    proxy = TcpProxy(es.hostname or "127.0.0.1", es.port or 9200)
    try:
        # A blocked proxy holds requests open: a short bulk timeout surfaces the outage in seconds, not the
        # production default's 3 x 30 s.
        via_proxy = settings.model_copy(
            update={"es_url": f"http://127.0.0.1:{proxy.port}", "es_bulk_timeout_s": bulk_timeout_s}
        )
        run = start_worker(via_proxy, engine=engine)
        produce(settings, good_docs("before", before))
        wait_until(lambda: es_count(settings) >= before, 240, "documents before the outage")
        proxy.block()
        produce(settings, good_docs("held", held))
        wait_until(lambda: run.worker.stalled is not None, 120, "the worker to stall")
        yield run, proxy
    finally:
        proxy.close()


def expected_ids(before: int, held: int) -> list[str]:
    return sorted([f"before-{i}" for i in range(before)] + [f"held-{i}" for i in range(held)])


@pytest.mark.parametrize("depth", [0, 3])
def test_elasticsearch_down_pauses_then_resumes_without_loss(
    worker_settings: WorkerSettings, engine_v1: Engine, start_worker: Callable[..., Running], depth: int
) -> None:
    """Batches of 4 with up to ``depth`` of them in the writer: the model runs ahead of a blocked Elasticsearch by
    exactly that many batches, and nothing written later is committed ahead of the batch that is stuck."""
    settings = worker_settings.model_copy(update={"pipeline_depth": depth, "max_batch_messages": 4})
    with stalled_behind_blocked_es(settings, engine_v1, start_worker, before=10, held=20, bulk_timeout_s=5.0) as (
        run,
        proxy,
    ):
        sink = run.worker.sink
        assert sink is not None

        def full_and_paused() -> bool:
            # the model ran ahead of the stuck batch by `depth` batches, then paused: scored, none written. (Waited
            # for, not asserted at once: the rebalance a new member often goes through drops the batches, and the
            # worker scores them again.)
            return sink.in_flight == depth + 1 and bool(run.worker.consumer and run.worker.consumer.paused())

        wait_until(full_and_paused, 60, "the writer to fill behind the stuck batch and consumption to pause")
        assert es_count(settings) == 10
        assert run.worker.metrics.paused._value.get() == 1
        # what the group has committed is in Elasticsearch: no held document is committed
        assert committed_ids(settings, settings.group_id) <= {f"before-{i}" for i in range(10)}
        proxy.unblock()
        wait_until(lambda: es_count(settings) >= 30, 240, "documents after the outage")
        assert run.worker.consumer is not None and run.worker.consumer.assignment()  # never left the group
        wait_until(lambda: run.worker.stalled is None, 30, "resume")
        assert not run.worker.consumer.paused()
        run.stop()
    assert sorted(d["_id"] for d in es_docs(settings)) == expected_ids(10, 20)
    assert committed_ids(settings, settings.group_id) == set(expected_ids(10, 20))  # stopping committed the rest


def test_a_rebalance_during_an_outage_redelivers_what_it_dropped(
    worker_settings: WorkerSettings, engine_v1: Engine, start_worker: Callable[..., Running]
) -> None:
    """A member joins and leaves while the worker holds unwritten batches (three in the writer, more polled): both
    rebalances drop them, and the worker gets partitions back whose fetch position lies past them. Every document
    must still arrive."""
    from kafka import KafkaConsumer

    settings = worker_settings.model_copy(update={"pipeline_depth": 2, "max_batch_messages": 8})
    with stalled_behind_blocked_es(settings, engine_v1, start_worker, before=6, held=30, bulk_timeout_s=2.0) as (
        run,
        proxy,
    ):
        intruder = KafkaConsumer(
            bootstrap_servers=worker_settings.kafka_bootstrap.split(","),
            group_id=worker_settings.group_id,
            enable_auto_commit=False,
        )
        try:
            intruder.subscribe([worker_settings.topic_raw])

            def intruder_has_partitions() -> bool:
                intruder.poll(timeout_ms=200)
                return bool(intruder.assignment())

            wait_until(intruder_has_partitions, 120, "the second member to get partitions")

            def worker_handed_over() -> bool:
                # The intruder keeps polling, as a real member does: kafka-python 3.0 can answer a join that
                # completed after its poll timed out with a fresh JoinGroup, and the group's next rebalance waits
                # for every member to re-join (up to the 300 s rebalance timeout). Seen once in CI, under load.
                intruder.poll(timeout_ms=100)
                return 0 < len(run.worker.consumer.assignment()) < 3

            # the worker keeps part of its partitions through the rebalance (their fetch positions too)
            wait_until(worker_handed_over, 120, "the worker to hand partitions over")
        finally:
            intruder.close(autocommit=False)
        wait_until(lambda: len(run.worker.consumer.assignment()) == 3, 120, "the worker to own every partition again")
        proxy.unblock()
        wait_until(lambda: es_count(worker_settings) >= 36, 240, "every document after the outage")
        run.stop()
    assert sorted(d["_id"] for d in es_docs(worker_settings)) == expected_ids(6, 30)
    assert committed_ids(settings, settings.group_id) == set(expected_ids(6, 30))


def test_two_workers_in_one_group_share_the_partitions(
    worker_settings: WorkerSettings, bundle_v1: tuple[Path, str], start_worker: Callable[..., Running]
) -> None:
    engines = [Engine(load_bundle(bundle_v1[0]), place("cpu", "fp32", 1)) for _ in range(2)]
    a = start_worker(engine=engines[0])
    b = start_worker(engine=engines[1])
    wait_until(
        lambda: all(r.worker.consumer is not None and r.worker.consumer.assignment() for r in (a, b)),
        90,
        "both workers to get partitions",
    )
    produce(worker_settings, good_docs("shared", 60))
    wait_until(lambda: es_count(worker_settings) >= 60, 180, "60 documents")
    parts = [{tp.partition for tp in r.worker.consumer.assignment()} for r in (a, b)]
    a.stop()
    b.stop()
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert parts[0] | parts[1] == {0, 1, 2}
    assert a.worker.batches_done > 0 and b.worker.batches_done > 0
    docs = es_docs(worker_settings)
    assert sorted(d["_id"] for d in docs) == sorted(f"shared-{i}" for i in range(60))


@pytest.mark.parametrize("limits_readable", [True, False], ids=["describe-configs", "no-describe-configs"])
def test_a_document_too_large_for_the_scored_topic_becomes_a_dead_letter_and_the_stream_goes_on(
    worker_settings: WorkerSettings,
    engine_v1: Engine,
    start_worker: Callable[..., Running],
    monkeypatch: pytest.MonkeyPatch,
    limits_readable: bool,
) -> None:
    """With ``limits_readable`` False the worker's principal may not read topic configurations (DescribeConfigs is
    an ACL of its own): the one admin call that reads them is made to fail as the broker would answer it; every
    record still goes through the real broker, which refuses what is too large."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
    from kafka.errors import TopicAuthorizationFailedError

    if not limits_readable:

        def denied(*args: Any, **kwargs: Any) -> dict[str, int]:
            raise TopicAuthorizationFailedError("DescribeConfigs denied (simulated ACL)")

        monkeypatch.setattr("schemas.topics.max_message_bytes", denied)
    produce(worker_settings, good_docs("before", 6))
    run = start_worker(engine=engine_v1)
    wait_until(lambda: es_count(worker_settings) >= 6, 240, "6 documents in ES")
    # the operator lowers the scored topic's limit to 4 KiB after the worker read it: the raw topic (1 MiB) takes a
    # 3.5 KB document whose scored form (labels, probabilities, coordinates) is larger. The broker refuses it, which
    # fails kafka-python's idempotent producer for good; the worker starts a new one, reads the limits again, and
    # turns the document into a dead letter on the retry. The dead-letter topic takes only 3,000 bytes: the letter is
    # cut to fit, and says so
    admin = KafkaAdminClient(bootstrap_servers=worker_settings.kafka_bootstrap.split(","))
    admin.alter_configs(
        [
            ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": limit})
            for topic, limit in ((worker_settings.topic_scored, "4096"), (worker_settings.topic_dlq, "3000"))
        ]
    )
    admin.close()
    large = {"id": "large", "channel": "news", "source": "test", "text": "Shares fell sharply. " * 170}
    produce(worker_settings, [("large", json.dumps(large).encode()), *good_docs("after", 6)])
    wait_until(lambda: es_count(worker_settings) >= 13, 240, "13 documents in ES")
    dlq = wait_for_records(worker_settings, worker_settings.topic_dlq, 1, 60)
    # and the stream goes on after it
    produce(worker_settings, good_docs("later", 4))
    wait_until(lambda: es_count(worker_settings) >= 17, 120, "17 documents in ES")
    run.stop()
    assert run.error is None
    (letter,) = dlq
    assert (letter["key"], letter["reason"]) == ("large", "kafka_rejected")
    assert "max.message.bytes" in letter["error"]
    # without the permission, the retried batch went one record at a time and the refusal named the document
    assert ("cannot be read" in letter["error"]) is not limits_readable
    raw = json.dumps(large)
    assert letter["payload_truncated"] and letter["payload_size"] == len(raw) and raw.startswith(letter["payload"])
    # the whole message is where the letter says
    raw_records = read_records(worker_settings, worker_settings.topic_raw, 3)
    (original,) = [m for m in raw_records if m.offset == letter["source_offset"] and m.key == b"large"]
    assert json.loads(original.value) == large
    scored = read_topic(worker_settings, worker_settings.topic_scored, 3)
    wanted = {f"{p}-{i}" for p in ("before", "after") for i in range(6)} | {f"later-{i}" for i in range(4)}
    assert {s["id"] for s in scored} == wanted  # at least once: a retried batch may have produced some twice
    assert "large" in {d["_id"] for d in es_docs(worker_settings)}  # searchable: only the scored topic refused it
    metric = run.worker.metrics.registry.get_sample_value
    assert metric("riskstream_worker_failures_total", {"reason": "kafka_rejected"}) == 1.0


def test_a_backlog_is_scored_in_full_micro_batches_not_one_per_poll(
    worker_settings: WorkerSettings, engine_v1: Engine, start_worker: Callable[..., Running]
) -> None:
    # 600 documents wait in Kafka before the worker starts: all older than max_wait_ms, so every batch is due at once
    produce(worker_settings, good_docs("backlog", 600))
    settings = worker_settings.model_copy(update={"poll_max_records": 40})
    run = start_worker(settings, engine=engine_v1)
    wait_until(lambda: es_count(worker_settings) >= 600, 240, "600 documents")
    run.stop()
    # one batch per poll would be 15 batches of at most 40; a batch that takes what the client already holds before
    # it closes fills to its budget (the first ones may hold only the partitions whose fetch had come back)
    assert run.worker.batches_done <= 6, f"{run.worker.batches_done} batches for 600 documents in 40-record polls"
    docs = es_docs(worker_settings)
    assert sorted(d["_id"] for d in docs) == sorted(f"backlog-{i}" for i in range(600))


def test_a_leader_whose_topic_gains_partitions_gets_them_despite_short_polls(worker_settings: WorkerSettings) -> None:
    """kafka-python 3.0 strands the join a leader starts when its topic gains partitions if a ``poll`` times out
    during it (without the rescue, this consumer keeps 1 partition for good: 4 runs of 4). The worker polls with
    timeouts down to 1 ms, and calls ``rescue_stranded_join`` after each poll."""
    import time

    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewPartitions, NewTopic

    from riskstream.kafka_client import rescue_stranded_join

    topic = f"{worker_settings.topic_raw}.grows"
    admin = KafkaAdminClient(bootstrap_servers=worker_settings.kafka_bootstrap.split(","))
    consumer = KafkaConsumer(
        bootstrap_servers=worker_settings.kafka_bootstrap.split(","),
        group_id=f"g-{topic}",
        enable_auto_commit=False,
        metadata_max_age_ms=500,  # notice the new partitions within a second, not the default 5 minutes
    )
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
        wait_until(lambda: bool(consumer.partitions_for_topic(topic)), 30, "the topic's metadata")
        consumer.subscribe([topic])

        def owns(n: int) -> Callable[[], bool]:
            def check() -> bool:
                consumer.poll(timeout_ms=1)
                rescue_stranded_join(consumer)
                return len(consumer.assignment()) == n

            return check

        wait_until(owns(1), 60, "the first partition", interval=0)
        admin.create_partitions({topic: NewPartitions(3)})
        started = time.monotonic()
        wait_until(owns(3), 60, "the new partitions", interval=0)
        assert time.monotonic() - started < 30
    finally:
        consumer.close(autocommit=False)
        admin.close()


class HeldEngine:
    """The test's engine, held inside its first ``score`` call until released; records every batch's size."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self._release = threading.Event()

    def score(self, texts: Any, channels: Any, progress: Any = None) -> Any:
        self.sizes.append(len(texts))
        self.entered.set()
        assert self._release.wait(60), "the test never released the engine"
        return self._engine.score(texts, channels, progress)

    def release(self) -> None:
        self._release.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


@pytest.mark.parametrize(
    ("top_up_wait_ms", "max_wait_ms", "batches"),
    [(0, 1000, [1, 1, 2]), (1000, 1000, [1, 3]), (1000, 100, [1, 1, 2])],
    ids=["no-wait", "wait", "wait-capped-by-max-wait"],
)
def test_a_record_that_waited_through_a_busy_batch_takes_the_records_arriving_just_after_it(
    worker_settings: WorkerSettings,
    engine_v1: Engine,
    start_worker: Callable[..., Running],
    top_up_wait_ms: int,
    max_wait_ms: int,
    batches: list[int],
) -> None:
    """A record that arrived while the model was busy is due at once (it waited longer than max_wait_ms). In a
    light stream the next records are a few ms behind it, in the broker or on the way: the top-up poll that waits
    ``top_up_wait_ms`` takes them into its batch, where a poll that does not wait closed a batch of one (a fifth to
    a quarter of a light stream's batches in bench e2e, on two loaded cores). The control (no wait) shows the
    scenario is the real one; the records behind come 0.6 s after the engine is released, well inside the wait,
    unless max_wait_ms caps it."""
    from kafka import KafkaProducer

    settings = worker_settings.model_copy(update={"top_up_wait_ms": top_up_wait_ms, "max_wait_ms": max_wait_ms})
    # one producer, connected before the timed steps (helpers.produce connects anew each time, which would eat into
    # the margins below); its linger keeps the records of one send() in one batch until the flush
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap.split(","), acks="all", linger_ms=200)

    def send(docs: list[tuple[str | None, bytes]]) -> None:
        for key, value in docs:
            producer.send(settings.topic_raw, key=key.encode() if key else None, value=value)
        producer.flush(30)

    held = HeldEngine(engine_v1)
    run = start_worker(settings, engine=held)
    try:
        # settled in the group first: a rebalance after the first batch would drop it and score it again
        wait_until(
            lambda: run.worker.consumer is not None and len(run.worker.consumer.assignment()) == 3, 120, "3 partitions"
        )
        time.sleep(1.0)
        send(good_docs("first", 1))
        assert held.entered.wait(120), "the worker never scored the first document"
        send(good_docs("alone", 1))  # arrives while the model is busy, and waits longer than max_wait_ms
        time.sleep(1.5)
        held.release()
        time.sleep(0.6)
        # one key, so one partition and one batch: the broker appends both at once. On two partitions the fetch the
        # top-up poll waits on may be answered between the two appends, and the batch closes with one of them
        # ([1, 2, 1] in a CI run): the wait takes what is already on its way, not what comes after.
        send([("behind", value) for _, value in good_docs("behind", 2)])
    finally:
        held.release()
        producer.close()
    wait_until(lambda: es_count(worker_settings) >= 4, 60, "4 documents")
    run.stop()
    assert held.sizes == batches

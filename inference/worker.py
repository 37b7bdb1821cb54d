"""The streaming worker: Kafka ``riskstream.docs.raw`` -> model -> Elasticsearch + ``riskstream.docs.scored``.

Every micro-batch goes through these steps, in this order (the checkpoint order; never reorder it):

1. parse every record: a raw document, or a dead letter (see :mod:`inference.dlq`);
2. score the documents with one engine (one model version per batch: a hot swap happens only between batches);
3. **write to Elasticsearch** (bulk, ``_id`` = document id, index from the document's own time; a redelivery
   overwrites). Documents Elasticsearch refuses for good become ``es_rejected`` dead letters;
4. **produce** every scored document to ``topic_scored`` and every dead letter to ``topic_dlq``, then **flush**
   (idempotent producer, acks=all) and check every send;
5. only then **commit** the batch's offsets.

Steps 1-2 and 5 run on the consumer's thread; steps 3-4 run on the write stage's thread
(:mod:`inference.stage`), which writes batches strictly in order. With ``pipeline_depth`` N >= 1 the consumer
thread scores the next batch while up to N earlier ones are being written (the model and the sinks overlap);
with 0 it waits for each batch to be committed before it polls again. Either way a batch is committed only after
it, and every batch before it, went through steps 3 and 4.

A crash anywhere before 5 means redelivery from the last commit: nothing is lost, and because the ES ``_id`` and
index are functions of the message, a redelivered document overwrites itself (exactly once in ES; the scored and
dead-letter topics are at-least-once, keyed by document id).

Backpressure: the consumer thread stops polling while the write stage holds more than ``pipeline_depth`` batches.
When step 3 or 4 fails (ES down, 429/5xx after a few quick retries, broker unreachable) the stage keeps the batch
and retries it with exponential backoff; once the stage is full behind it, the consumer thread pauses every
assigned partition and keeps calling ``poll`` (which returns nothing while paused) so it stays in the consumer
group, and resumes once the batch went through.

A rebalance drops uncommitted work: with the eager protocol every partition is revoked, and the new owner restarts
from the committed offsets. The worker drops the micro-batch being filled and every batch the write stage holds
(a write in progress finishes; ES overwrites by ``_id``). When the new owner is this worker again, kafka-python
(3.x) keeps the partition's fetch position, which already lies past the records just dropped; the worker therefore
remembers, per partition, the lowest offset it dropped and seeks back to it when the partition is assigned again.
Without that, the dropped records would be skipped until the next restart. (The revocation callback does not
commit what was already written: kafka-python 3 may run it on its network thread, which refuses blocking calls
such as a commit. Redelivering a written batch costs a second scoring, not a duplicate.)
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from inference.batching import MicroBatcher
from inference.device import Placement, place
from inference.dlq import Source, dead_letter, parse
from inference.engine import DocScore, Engine
from inference.hotswap import ChampionLookup, ModelWatcher, load_engine, load_path_engine, registry_lookup
from inference.metrics import WorkerMetrics
from inference.settings import WorkerSettings
from inference.sinks import EncodedDoc, EsBulkSink, KafkaOut, RefusedSend, SinkUnavailableError
from inference.stage import WriteStage
from riskstream.kafka_client import rescue_stranded_join
from schemas.records import DeadLetter, RawDocument, ScoredDocument

log = logging.getLogger(__name__)


@dataclass
class ScoredBatch:
    """A micro-batch after scoring: what still has to be written, produced and committed."""

    docs: list[tuple[EncodedDoc, Source]]  # serialised once, on this thread: the same bytes go to ES and Kafka
    dead: list[DeadLetter]
    offsets: dict[tuple[str, int], int]  # (topic, partition) -> next offset to commit
    first_offsets: dict[tuple[str, int], int]  # (topic, partition) -> the batch's lowest offset (to rewind to)
    messages: int
    tokens: int
    model_version: str
    written: bool = False
    attempts: int = 0
    started: float = field(default_factory=time.perf_counter)
    scored_s: float = 0.0  # parse + score
    es_s: float = 0.0  # the Elasticsearch bulk (last attempt)
    kafka_s: float = 0.0  # the produce and flush (last attempt)


def to_scored(raw: RawDocument, score: DocScore, source: Source, scored_at: datetime) -> ScoredDocument:
    data = raw.model_dump()
    data.update(
        ingested_at=raw.ingested_at or scored_at,
        scored_at=scored_at,
        sentiment=score.sentiment,
        topic=score.topic,
        model_version=score.model_version,
        risk_score=score.risk_score,
        uncertainty=score.uncertainty,
        kafka=source.coordinates(),
    )
    return ScoredDocument.model_validate(data)


def score_batch(engine: Engine, records: Iterable[Any], metrics: WorkerMetrics | None = None) -> ScoredBatch:
    """Steps 1-2: parse and score one micro-batch (pure apart from the model; no I/O)."""
    parsed: list[tuple[RawDocument, Source]] = []
    dead: list[DeadLetter] = []
    offsets: dict[tuple[str, int], int] = {}
    first: dict[tuple[str, int], int] = {}
    n = 0
    for record in records:
        n += 1
        source = Source.of(record)
        tp = (source.topic, source.partition)
        offsets[tp] = max(offsets.get(tp, 0), source.offset + 1)
        first[tp] = min(first.get(tp, source.offset), source.offset)
        result = parse(source)
        if isinstance(result, DeadLetter):
            dead.append(result)
        else:
            parsed.append((result, source))
    docs: list[tuple[EncodedDoc, Source]] = []
    tokens = 0
    if parsed:
        scores = engine.score([raw.text for raw, _ in parsed], [raw.channel for raw, _ in parsed])
        now = datetime.now(tz=UTC)
        for (raw, source), score in zip(parsed, scores, strict=True):
            try:
                docs.append((EncodedDoc.of(to_scored(raw, score, source, now)), source))
                tokens += score.tokens
            except ValueError as exc:  # pydantic ValidationError is a ValueError
                dead.append(dead_letter(source, "schema_violation", str(exc)))
    if metrics is not None:
        for letter in dead:
            metrics.failures.labels(reason=letter.reason).inc()
    return ScoredBatch(docs, dead, offsets, first, n, tokens, engine.version)


def model_info(engine: Engine) -> dict[str, str]:
    """Labels of ``riskstream_worker_model_info``: the version served and how (``auto`` precision differs by CPU;
    ``cpu_fusion`` is ``none`` where the fused kernels do not apply or failed their check at load)."""
    return {
        "version": engine.version,
        "precision": engine.placement.precision,
        "backend": engine.backend,
        "device": str(engine.placement.device),
        "cpu_fusion": engine.fusion,
    }


class Worker:
    """One consumer-group member. ``run()`` blocks until ``stop()`` (or SIGTERM/SIGINT via ``install_signals``)."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        engine: Engine | None = None,
        lookup: ChampionLookup | None = None,
        es_client: Any = None,
        metrics: WorkerMetrics | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.placement = placement or place(
            settings.device, settings.precision, settings.torch_threads, backend=settings.backend
        )
        self._stop = threading.Event()
        self._lookup = lookup
        self.engine = engine
        self.watcher: ModelWatcher | None = None
        self.batches_done = 0
        self.versions_by_batch: list[str] = []  # for tests and logs: the model version of each committed batch
        if es_client is None:
            from riskstream.es import make_client

            es_client = make_client(settings)
        self.es = es_client
        self.es_sink = EsBulkSink(es_client, settings.es_docs_alias, self.metrics, timeout_s=settings.es_bulk_timeout_s)
        self.consumer: Any = None
        self.out: KafkaOut | None = None
        self.batcher: MicroBatcher[Any] = MicroBatcher(
            settings.batch_token_budget, settings.max_batch_messages, settings.max_wait_ms / 1000
        )
        self.sink: WriteStage[ScoredBatch] | None = None
        # the batch the write stage is stuck on while consumption is paused (None otherwise)
        self.stalled: ScoredBatch | None = None
        # (topic, partition) -> lowest offset dropped by the last revocation, sought back to if reassigned
        self._rewind: dict[tuple[str, int], int] = {}

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _initial_engine(self) -> Engine:
        if self.engine is not None:
            return self.engine
        if self.settings.bundle is not None:
            return load_path_engine(self.settings.bundle, self.settings, self.placement)
        lookup = self._lookup or registry_lookup(self.settings.db_url)
        self._lookup = lookup
        waited = 0.0
        while not self._stop.is_set():
            record = lookup()
            if record is not None:
                return load_engine(record, self.settings, self.placement)
            if waited % 30 == 0:
                log.warning("no champion model in the registry yet; waiting (run `riskstream finetune run`)")
            self._stop.wait(1.0)
            waited += 1.0
        raise SystemExit(0)

    def _connect(self) -> None:
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        from riskstream.kafka_client import client_options
        from schemas.es import ensure_templates
        from schemas.topics import ensure_configured

        ensure_templates(self.es, self.settings.es_docs_alias, self.settings.es_alerts_alias)
        # the topics exist before the first produce, which then never waits for a broker to create one
        ensure_configured(self.settings, [self.settings.topic_raw, self.settings.topic_scored, self.settings.topic_dlq])
        worker = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                worker._on_revoked(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("assigned partitions: %s", sorted(tp.partition for tp in assigned))
                worker._on_assigned(assigned)

        self.consumer = KafkaConsumer(
            **client_options(self.settings),
            group_id=self.settings.group_id,
            client_id=f"riskstream-worker-{self.settings.group_id}",
            enable_auto_commit=False,
            auto_offset_reset=self.settings.auto_offset_reset,
            max_poll_records=self.settings.poll_max_records,
        )
        # Know the topic's partitions before joining: a member that joins without that metadata is assigned nothing
        # and only rebalances at the next metadata refresh (metadata.max.age.ms, 5 min by default).
        deadline = time.monotonic() + 30
        while not self.consumer.partitions_for_topic(self.settings.topic_raw) and time.monotonic() < deadline:
            if self._stop.wait(0.5):
                break
        self.consumer.subscribe([self.settings.topic_raw], listener=Listener())
        self.out = KafkaOut(client_options(self.settings), dead_letter_max_bytes=self.settings.dead_letter_max_bytes)
        self.out.on_restart = self._read_topic_limits
        self._read_topic_limits(self.out)
        self.sink = WriteStage(self._write, backoff_s=self._backoff_s)

    def _read_topic_limits(self, out: KafkaOut) -> None:
        """The output topics' max.message.bytes, so a record too large for its topic is found before it is sent."""
        from schemas.topics import max_message_bytes

        try:
            out.set_limits(max_message_bytes(self.settings, [self.settings.topic_scored, self.settings.topic_dlq]))
        except Exception as exc:  # e.g. no DescribeConfigs permission: the broker's refusal is still handled
            log.warning(
                "cannot read the output topics' max.message.bytes (%s); a record the broker refuses is found by "
                "sending the retried batch one record at a time",
                exc,
            )
        else:
            log.info("output topics take records of at most %s bytes", out.limits)

    def run(self) -> None:
        self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        self.engine = self._initial_engine()
        self.metrics.model.info(model_info(self.engine))
        if self.settings.bundle is None and self._lookup is not None:
            self.watcher = ModelWatcher(
                self._lookup,
                settings=self.settings,
                placement=self.placement,
                current=(self.engine.version, self.engine.bundle.sha256),
                interval_s=self.settings.hotswap_interval_s,
                metrics=self.metrics,
            )
            self.watcher.start()
        self._connect()
        log.info(
            "worker up: group %s, topic %s, model %s",
            self.settings.group_id,
            self.settings.topic_raw,
            self.engine.version,
        )
        try:
            self._loop()
            self._drain()
        finally:
            self.close()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.sink is not None:
            self.sink.close(timeout_s=self._drain_timeout_s())
            self.sink = None
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
            self.consumer = None
        if self.out is not None:
            self.out.close()
            self.out = None

    # ---- the loop --------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        assert self.sink is not None
        idle_since = time.monotonic()
        while not self._stop.is_set():
            self.sink.check()
            self._commit_done()
            if self.sink.in_flight > self.settings.pipeline_depth:  # backpressure: the sinks are behind the model
                if self.sink.stalled:
                    self._hold_while_stalled()
                else:
                    self.sink.wait(0.2)
                continue
            now = time.monotonic()
            if self.batcher.due(now):  # the rest of a poll larger than one micro-batch: no need to wait in a poll
                if not self.batcher.full():
                    self._top_up()
                if len(self.batcher):  # a rebalance inside the top-up's poll drops what the batcher held
                    self._process(self.batcher.take())
                continue
            timeout_ms = max(1, int(self.batcher.time_left(now) * 1000)) if len(self.batcher) else 200
            # records returned here all belong to the current assignment (a rebalance inside poll() already ran
            # _on_revoked, and positions of newly assigned partitions come from the committed offsets)
            polled = self._poll(timeout_ms)
            now = time.monotonic()
            self._add(polled, now)
            if polled:
                idle_since = now
                if self.batcher.due(now) and not self.batcher.full():
                    now = self._top_up()
            if self.batcher.due(now):
                self._process(self.batcher.take())
            elif not len(self.batcher) and not self.sink.in_flight and 0 < self.settings.idle_exit_s < now - idle_since:
                log.info("idle for %.0f s: exiting", self.settings.idle_exit_s)
                return

    def _poll(self, timeout_ms: int) -> dict[Any, list[Any]]:
        polled: dict[Any, list[Any]] = self.consumer.poll(timeout_ms=timeout_ms)
        if rescue_stranded_join(self.consumer):
            log.warning("kafka-python left a finished group join unapplied (a known bug of its 3.0 line): re-joining")
            self.metrics.failures.labels(reason="stranded_join").inc()
        return polled

    def _top_up(self) -> float:
        """A micro-batch about to close by age takes what the client already holds first (polls that do not wait),
        until the batch is full or nothing more is there; returns the time after the last poll.

        Under a backlog every record is older than ``max_wait_ms``, so without this each poll (at most
        ``poll_max_records``) would become a batch of its own. Batches of 300 tweets scored 15-30% fewer documents
        per second than batches of 1,000 (uneven forward passes at their ends, less to sort by length), so a backlog
        is cleared faster in full batches. At light load the extra poll returns nothing.

        The first poll may wait ``top_up_wait_ms``: after a busy batch the client often holds one record, fetched
        alone, while the others that arrived meanwhile wait in the broker until the next fetch, which only a poll
        sends. A poll that does not wait would close the batch on that one record. The wait is capped at
        ``max_wait_ms``: the top-up adds at most that to a batch's wait."""
        wait_ms = min(self.settings.top_up_wait_ms, self.settings.max_wait_ms)
        while True:
            more = self._poll(wait_ms)
            wait_ms = 0
            now = time.monotonic()
            if not any(more.values()):
                return now
            self._add(more, now)
            if self.batcher.full():
                return now

    def _add(self, polled: dict[Any, list[Any]], now: float) -> None:
        wall = time.time()
        # the engine truncates every document to its max_length: a long article weighs no more than that in a batch
        cap = (self.engine.max_length if self.engine is not None else 512) + 2
        for records in polled.values():
            for record in records:
                size = len(record.value) if record.value is not None else 0
                # how long the record already waited in Kafka (producer's CreateTime; clamped by the batcher)
                stamp = getattr(record, "timestamp", None)
                age = wall - stamp / 1000 if isinstance(stamp, int) and stamp > 0 else 0.0
                self.batcher.add(record, min(size // 4 + 2, cap), now, age)
        self.metrics.queue_depth.set(len(self.batcher))

    def _drain_timeout_s(self) -> float:
        # one bulk request with its quick retries, and the produce; beyond that the batch is left for redelivery
        return 3 * self.settings.es_bulk_timeout_s + 10

    def _drain(self) -> None:
        """On stop: score what the batcher holds, give every unwritten batch one more attempt at its sinks, and
        commit what went through. The rest is left uncommitted, for redelivery."""
        assert self.sink is not None
        while len(self.batcher) and not self.sink.stalled:
            self._process(self.batcher.take())
        if not self.sink.close(timeout_s=self._drain_timeout_s()):
            log.warning("stopping while a batch is still being written; it will be redelivered")
        self._commit_done()
        self.sink.check()

    def _swap_if_ready(self) -> None:
        if self.watcher is None:
            return
        new = self.watcher.take()
        if new is not None and self.engine is not None:
            log.info("hot swap: %s -> %s", self.engine.version, new.version)
            self.engine = new
            self.metrics.model.info(model_info(new))
            self.metrics.swaps.inc()

    def _process(self, records: list[Any]) -> None:
        """Steps 1-2 on this thread, then hand the batch to the write stage (steps 3-4)."""
        assert self.sink is not None
        self._swap_if_ready()  # between batches only: one version per batch
        assert self.engine is not None
        started = time.perf_counter()
        batch = score_batch(self.engine, records, self.metrics)
        batch.started = started  # the batch's time (metrics, logs) includes parsing and scoring
        batch.scored_s = time.perf_counter() - started
        self.metrics.batch_size.observe(batch.messages)
        self.sink.submit(batch)
        self.metrics.in_flight.set(self.sink.in_flight)

    def _write(self, batch: ScoredBatch) -> None:
        """Steps 3-4 for one scored batch, on the write stage's thread. Raises SinkUnavailableError on a failure
        that may heal; the stage then retries the batch (ES is skipped if it already took the batch)."""
        assert self.out is not None
        batch.attempts += 1
        # 3. Elasticsearch (skipped on a retry after ES already took it and only the produce failed)
        t_es = time.perf_counter()
        if not batch.written:
            rejected = self.es_sink.write([doc for doc, _ in batch.docs])
            if rejected:
                by_id = {id(r.doc): r for r in rejected}
                kept: list[tuple[EncodedDoc, Source]] = []
                for doc, source in batch.docs:
                    rej = by_id.get(id(doc))
                    if rej is None:
                        kept.append((doc, source))
                    else:
                        batch.dead.append(dead_letter(source, "es_rejected", f"HTTP {rej.status} {rej.error}"))
                        self.metrics.failures.labels(reason="es_rejected").inc()
                batch.docs = kept
            batch.written = True
        # 4. Kafka: scored documents and dead letters, then flush (raises if any send failed)
        t_kafka = time.perf_counter()
        self._produce(batch)
        batch.es_s = t_kafka - t_es
        batch.kafka_s = time.perf_counter() - t_kafka

    def _produce(self, batch: ScoredBatch) -> None:
        """Step 4. A scored document the scored topic refuses for good (larger than its max.message.bytes) is
        already in Elasticsearch; it becomes a ``kafka_rejected`` dead letter instead of stalling the batch."""
        assert self.out is not None
        settings = self.settings
        for doc, _ in batch.docs:
            self.out.send_scored(settings.topic_scored, doc)
        for letter in batch.dead:
            self.out.send_dead(settings.topic_dlq, letter)
        refused = self.out.flush()
        if not refused:
            return
        self._raise_if_dead_letters_refused(refused)
        by_ref = {id(r.ref): r for r in refused}
        kept: list[tuple[EncodedDoc, Source]] = []
        letters: list[DeadLetter] = []
        for doc, source in batch.docs:
            refusal = by_ref.get(id(doc))
            if refusal is None:
                kept.append((doc, source))
                continue
            log.warning("topic %s refused document %s: %s", settings.topic_scored, doc.doc.id, refusal.error)
            error = f"searchable in Elasticsearch, but {settings.topic_scored} refused it: {refusal.error}"
            letters.append(dead_letter(source, "kafka_rejected", error))
            self.metrics.failures.labels(reason="kafka_rejected").inc()
        batch.docs = kept
        batch.dead.extend(letters)
        for letter in letters:
            self.out.send_dead(settings.topic_dlq, letter)
        self._raise_if_dead_letters_refused(self.out.flush())

    def _raise_if_dead_letters_refused(self, refused: list[RefusedSend]) -> None:
        letters = [r for r in refused if isinstance(r.ref, DeadLetter)]
        if letters:  # nothing is dropped: the batch stays uncommitted and is retried until an operator acts
            raise SinkUnavailableError(
                f"topic {self.settings.topic_dlq} refused {len(letters)} dead letters ({letters[0].error}); "
                f"set --dead-letter-max-bytes under its max.message.bytes"
            )

    def _commit_done(self) -> None:
        """Step 5 for every batch the write stage finished, in the order they were written."""
        assert self.sink is not None
        done = self.sink.take_done()
        for batch in done:
            t_commit = time.perf_counter()
            self._commit(batch)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "batch of %d messages (%d tokens): score %.3f s, es %.3f s, kafka %.3f s, commit %.3f s, "
                    "%.3f s in all",
                    batch.messages,
                    batch.tokens,
                    batch.scored_s,
                    batch.es_s,
                    batch.kafka_s,
                    time.perf_counter() - t_commit,
                    time.perf_counter() - batch.started,
                )
            for doc, _ in batch.docs:
                self.metrics.docs.labels(channel=doc.doc.channel).inc()
            self.metrics.tokens.inc(batch.tokens)
            self.metrics.batch_seconds.observe(time.perf_counter() - batch.started)
            self.batches_done += 1
            self.versions_by_batch.append(batch.model_version)
        if done:
            self.metrics.in_flight.set(self.sink.in_flight)
            self.metrics.queue_depth.set(len(self.batcher))
            self._update_lag()

    def _commit(self, batch: ScoredBatch) -> None:
        from kafka.errors import CommitFailedError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in batch.offsets.items()}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets)
        except CommitFailedError as exc:
            # The group rebalanced meanwhile; the new owner redelivers, and ES overwrites by _id: no loss.
            log.warning("commit failed after a rebalance (%s); the batch will be redelivered", exc)
            self.metrics.failures.labels(reason="commit_failed").inc()

    def _update_lag(self) -> None:
        try:
            for tp in self.consumer.assignment():
                high = self.consumer.highwater(tp)
                if high is None:
                    continue
                position = self.consumer.position(tp, timeout_ms=1000)
                if position is not None:
                    self.metrics.lag.labels(partition=str(tp.partition)).set(max(0, high - position))
        except Exception as exc:  # lag is best effort, never a reason to stop
            log.debug("lag update failed: %s", exc)

    # ---- backpressure ----------------------------------------------------------------------------------------

    def _pause(self) -> None:
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)
        self.metrics.paused.set(1)

    def _resume(self) -> None:
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)
        self.metrics.paused.set(0)

    def _seek_back(self, polled: dict[Any, list[Any]]) -> None:
        for tp, records in polled.items():
            if records:
                log.info("%d records returned while stalled: %s back to %d", len(records), tp, records[0].offset)
                self.consumer.seek(tp, records[0].offset)

    def _backoff_s(self, attempts: int) -> float:
        base = min(self.settings.es_retry_max_s, 0.5 * 2 ** min(attempts, 10))
        return base * (0.5 + random.random() / 2)

    def _hold_while_stalled(self) -> None:
        """The write stage is retrying a batch: pause consumption, stay in the group, resume once it went through.

        Paused partitions return nothing from ``poll``, which still heartbeats and runs the rebalance callbacks. A
        rebalance meanwhile drops the stuck batch (``_on_revoked``), which also ends the stall."""
        assert self.sink is not None
        self.stalled = self.sink.head()
        log.warning("a sink is unavailable: pausing consumption until the batch is written")
        self.metrics.failures.labels(reason="sink_unavailable").inc()
        self._pause()
        while not self._stop.is_set() and self.sink.stalled:
            self.sink.check()
            self.consumer.pause(*self.consumer.assignment())
            polled = self._poll(200)
            if any(polled.values()):
                # Paused partitions should return nothing, but records the fetcher already held can still come
                # back (or come from a partition just reassigned). Their position has moved past them: seek back
                # so they are fetched again after the resume, never dropped.
                self._seek_back(polled)
        stuck, self.stalled = self.stalled, None
        if self._stop.is_set():
            return  # stay paused; _drain gives the batch one more attempt
        # written, or dropped by a rebalance (which _on_revoked logged) for redelivery
        log.info("resuming consumption after %d attempts at the stuck batch", stuck.attempts if stuck else 0)
        self._resume()

    def _on_revoked(self, revoked: Any) -> None:
        """Drop uncommitted work (batcher and write stage) and remember where each partition must restart."""
        rewind: dict[tuple[str, int], int] = {}
        for record in self.batcher.drain():
            tp = (record.topic, record.partition)
            rewind[tp] = min(rewind.get(tp, record.offset), record.offset)
        # every batch the write stage holds, written or not: nothing of it is committed yet
        for batch in self.sink.cancel() if self.sink is not None else []:
            for tp, offset in batch.first_offsets.items():
                rewind[tp] = min(rewind.get(tp, offset), offset)
        if rewind:
            log.info(
                "partitions revoked: dropping uncommitted messages from %s (redelivered from the last commit)",
                {f"{t}-{p}": o for (t, p), o in sorted(rewind.items())},
            )
        for tp, offset in rewind.items():
            self._rewind[tp] = min(self._rewind.get(tp, offset), offset)
        self.metrics.in_flight.set(0)
        self.metrics.queue_depth.set(0)

    def _on_assigned(self, assigned: Any) -> None:
        """Seek back to what the last revocation dropped (kafka-python keeps the position of a kept partition).

        A kept partition also keeps its paused flag; the stall loop resumes it once it sees its batch dropped."""
        rewind, self._rewind = self._rewind, {}
        for tp in assigned:
            offset = rewind.get((tp.topic, tp.partition))
            if offset is not None:
                log.info("partition %s-%d reassigned: seeking back to %d", tp.topic, tp.partition, offset)
                self.consumer.seek(tp, offset)

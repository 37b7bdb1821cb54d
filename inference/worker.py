"""The streaming worker: Kafka ``riskstream.docs.raw`` -> model -> Elasticsearch + ``riskstream.docs.scored``.

One micro-batch at a time, in this order (the checkpoint order; never reorder it):

1. parse every record: a raw document, or a dead letter (see :mod:`inference.dlq`);
2. score the documents with one engine (one model version per batch: a hot swap happens only between batches);
3. **write to Elasticsearch** (bulk, ``_id`` = document id, index from the document's own time; a redelivery
   overwrites). Documents Elasticsearch refuses for good become ``es_rejected`` dead letters;
4. **produce** every scored document to ``topic_scored`` and every dead letter to ``topic_dlq``, then **flush**
   (idempotent producer, acks=all) and check every send;
5. only then **commit** the batch's offsets.

A crash anywhere before 5 means redelivery from the last commit: nothing is lost, and because the ES ``_id`` and
index are functions of the message, a redelivered document overwrites itself (exactly once in ES; the scored and
dead-letter topics are at-least-once, keyed by document id).

Backpressure: when step 3 or 4 fails (ES down, 429/5xx after a few quick retries, broker unreachable) the worker
keeps the scored batch, pauses every assigned partition, and keeps calling ``poll`` (which returns nothing while
paused) so it stays in the consumer group, retrying with exponential backoff; it resumes once the batch went
through.

A rebalance drops uncommitted work: with the eager protocol every partition is revoked, and the new owner restarts
from the committed offsets. When the new owner is this worker again, kafka-python (3.x) keeps the partition's
fetch position, which already lies past the records just dropped; the worker therefore remembers, per partition,
the lowest offset it dropped and seeks back to it when the partition is assigned again. Without that, the dropped
records would be skipped until the next restart.
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
from inference.sinks import EsBulkSink, KafkaOut, SinkUnavailableError
from schemas.records import DeadLetter, RawDocument, ScoredDocument

log = logging.getLogger(__name__)


@dataclass
class ScoredBatch:
    """A micro-batch after scoring: what still has to be written, produced and committed."""

    docs: list[tuple[ScoredDocument, Source]]
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
    docs: list[tuple[ScoredDocument, Source]] = []
    tokens = 0
    if parsed:
        scores = engine.score([raw.text for raw, _ in parsed], [raw.channel for raw, _ in parsed])
        now = datetime.now(tz=UTC)
        for (raw, source), score in zip(parsed, scores, strict=True):
            try:
                docs.append((to_scored(raw, score, source, now), source))
                tokens += score.tokens
            except ValueError as exc:  # pydantic ValidationError is a ValueError
                dead.append(dead_letter(source, "schema_violation", str(exc)))
    if metrics is not None:
        for letter in dead:
            metrics.failures.labels(reason=letter.reason).inc()
    return ScoredBatch(docs, dead, offsets, first, n, tokens, engine.version)


def model_info(engine: Engine) -> dict[str, str]:
    """Labels of ``riskstream_worker_model_info``: the version served and how (``auto`` precision differs by CPU)."""
    return {
        "version": engine.version,
        "precision": engine.placement.precision,
        "backend": engine.backend,
        "device": str(engine.placement.device),
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
        self.out = KafkaOut(client_options(self.settings))

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
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
            self.consumer = None
        if self.out is not None:
            self.out.close()
            self.out = None

    # ---- the loop --------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        idle_since = time.monotonic()
        while not self._stop.is_set():
            if self.stalled is not None:
                self._retry_stalled()
                continue
            now = time.monotonic()
            timeout_ms = max(1, int(self.batcher.time_left(now) * 1000)) if len(self.batcher) else 200
            # records returned here all belong to the current assignment (a rebalance inside poll() already ran
            # _on_revoked, and positions of newly assigned partitions come from the committed offsets)
            polled = self.consumer.poll(timeout_ms=timeout_ms)
            now = time.monotonic()
            self._add(polled, now)
            if polled:
                idle_since = now
            if self.batcher.due(now):
                self._process(self.batcher.drain())
            elif not len(self.batcher) and 0 < self.settings.idle_exit_s < now - idle_since:
                log.info("idle for %.0f s: exiting", self.settings.idle_exit_s)
                return

    def _add(self, polled: dict[Any, list[Any]], now: float) -> None:
        wall = time.time()
        for records in polled.values():
            for record in records:
                size = len(record.value) if record.value is not None else 0
                # how long the record already waited in Kafka (producer's CreateTime; clamped by the batcher)
                stamp = getattr(record, "timestamp", None)
                age = wall - stamp / 1000 if isinstance(stamp, int) and stamp > 0 else 0.0
                self.batcher.add(record, size // 4 + 2, now, age)
        self.metrics.queue_depth.set(len(self.batcher))

    def _drain(self) -> None:
        """On stop: finish the in-flight batch (one attempt at its sinks) and commit, else leave it for redelivery."""
        if self.stalled is not None:
            try:
                self._finish(self.stalled)
            except SinkUnavailableError as exc:
                log.warning("stopping with an unwritten batch (%s); it will be redelivered", exc)
            self.stalled = None
            return
        if len(self.batcher):
            try:
                self._process(self.batcher.drain(), retry_on_failure=False)
            except SinkUnavailableError as exc:
                log.warning("stopping with an unwritten batch (%s); it will be redelivered", exc)

    def _swap_if_ready(self) -> None:
        if self.watcher is None:
            return
        new = self.watcher.take()
        if new is not None and self.engine is not None:
            log.info("hot swap: %s -> %s", self.engine.version, new.version)
            self.engine = new
            self.metrics.model.info(model_info(new))
            self.metrics.swaps.inc()

    def _process(self, records: list[Any], *, retry_on_failure: bool = True) -> None:
        self._swap_if_ready()  # between batches only: one version per batch
        assert self.engine is not None
        started = time.perf_counter()
        batch = score_batch(self.engine, records, self.metrics)
        batch.started = started  # the batch's time (metrics, logs) includes parsing and scoring
        batch.scored_s = time.perf_counter() - started
        self.metrics.batch_size.observe(batch.messages)
        try:
            self._finish(batch)
        except SinkUnavailableError as exc:
            if not retry_on_failure:
                raise
            log.warning("sink unavailable (%s): pausing consumption, will retry the batch", exc)
            self.metrics.failures.labels(reason="sink_unavailable").inc()
            self.stalled = batch
            self._pause()

    def _finish(self, batch: ScoredBatch) -> None:
        """Steps 3-5 for one scored batch. Raises SinkUnavailableError before committing anything on failure."""
        assert self.out is not None
        settings = self.settings
        batch.attempts += 1
        # 3. Elasticsearch (skipped on a retry after ES already took it and only the produce failed)
        t_es = time.perf_counter()
        if not batch.written:
            rejected = self.es_sink.write([doc for doc, _ in batch.docs])
            if rejected:
                by_id = {id(r.doc): r for r in rejected}
                kept: list[tuple[ScoredDocument, Source]] = []
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
        for doc, _ in batch.docs:
            self.out.send_scored(settings.topic_scored, doc)
        for letter in batch.dead:
            self.out.send_dead(settings.topic_dlq, letter)
        self.out.flush()
        # 5. only now: commit
        t_commit = time.perf_counter()
        self._commit(batch)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "batch of %d messages (%d tokens): score %.3f s, es %.3f s, kafka %.3f s, commit %.3f s",
                batch.messages,
                batch.tokens,
                batch.scored_s,
                t_kafka - t_es,
                t_commit - t_kafka,
                time.perf_counter() - t_commit,
            )
        for doc, _ in batch.docs:
            self.metrics.docs.labels(channel=doc.channel).inc()
        self.metrics.tokens.inc(batch.tokens)
        self.metrics.batch_seconds.observe(time.perf_counter() - batch.started)
        self.metrics.queue_depth.set(len(self.batcher))
        self.batches_done += 1
        self.versions_by_batch.append(batch.model_version)
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

    def _retry_stalled(self) -> None:
        batch = self.stalled
        assert batch is not None
        deadline = time.monotonic() + self._backoff_s(batch.attempts)
        while not self._stop.is_set() and time.monotonic() < deadline:
            # paused: poll returns nothing, but keeps this member in the group (and runs rebalance callbacks)
            self.consumer.pause(*self.consumer.assignment())
            polled = self.consumer.poll(timeout_ms=max(1, int(min(1.0, deadline - time.monotonic()) * 1000)))
            if self.stalled is None:  # dropped by a rebalance: start over from the committed offsets
                self._resume()
                self._add(polled, time.monotonic())
                return
            if any(polled.values()):
                # Paused partitions should return nothing, but records the fetcher already held can still come
                # back. Their position has moved past them: seek back so they are fetched again after the
                # resume, never dropped.
                self._seek_back(polled)
        if self._stop.is_set():
            return
        try:
            self._finish(batch)
        except SinkUnavailableError as exc:
            log.warning("retry %d of a stalled batch failed: %s", batch.attempts, exc)
            return
        log.info("sinks are back after %d attempts: resuming", batch.attempts)
        self.stalled = None
        self._resume()

    def _on_revoked(self, revoked: Any) -> None:
        """Drop uncommitted work (batcher and stalled batch) and remember where each partition must restart."""
        rewind: dict[tuple[str, int], int] = {}
        for record in self.batcher.drain():
            tp = (record.topic, record.partition)
            rewind[tp] = min(rewind.get(tp, record.offset), record.offset)
        if self.stalled is not None:
            for tp, offset in self.stalled.first_offsets.items():
                rewind[tp] = min(rewind.get(tp, offset), offset)
        if rewind:
            log.info(
                "partitions revoked: dropping uncommitted messages from %s (redelivered from the last commit)",
                {f"{t}-{p}": o for (t, p), o in sorted(rewind.items())},
            )
        for tp, offset in rewind.items():
            self._rewind[tp] = min(self._rewind.get(tp, offset), offset)
        self.stalled = None
        self.metrics.paused.set(0)
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

"""Output adapters of the worker: the Elasticsearch bulk writer and the Kafka producer.

A scored document is serialised once (:class:`EncodedDoc`): the same JSON bytes go into the bulk request and onto
``riskstream.docs.scored``, so neither sink builds its own dict or string of it (on a 2-core CPU that was a third of
the writer thread's Python time per document, time it takes the interpreter lock from the model).

Both follow the same small protocol: ``write``/``add`` a batch, ``flush``; a failure that may heal (ES down, 429,
5xx, broker unreachable) raises :class:`SinkUnavailableError`, and the worker keeps the batch, pauses and retries.
A document Elasticsearch refuses for good (a mapping rejection) is returned, not raised: it becomes a dead letter.
So is one for which it refuses a whole bulk request (400: a request that fails validation, e.g. an over-long
``_id``; 413: too large): the request is halved until the refused documents stand alone, and the others go in.
So is a record larger than its Kafka topic takes (``max.message.bytes``), found before it is sent; dead letters are
cut to fit their topic first (:func:`fit_dead_letter`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from inference.metrics import WorkerMetrics
from schemas.es import index_for
from schemas.records import DeadLetter, ScoredDocument, fit_dead_letter
from schemas.topics import RECORD_OVERHEAD_BYTES, SIZE_REFUSALS

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# a whole bulk request refused for what it carries (nothing of it was written): find the documents to blame
REFUSED_REQUEST_STATUS = frozenset({400, 413})


class SinkUnavailableError(RuntimeError):
    """A sink failed in a way that may heal; the batch must be retried, its offsets not committed."""


class _TransientBulkError(Exception):
    pass


class _RefusedRequestError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status} {detail}")
        self.status = status
        self.detail = detail


def _error_detail(body: Any, fallback: str) -> str:
    """``type: reason`` of an Elasticsearch error body (a bulk item's ``error`` or a response's)."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return f"{error.get('type', '')}: {error.get('reason', '')}"
    return str(error) if error else fallback


# what a bulk response needs to carry: whether anything failed, and each item's status and error (not the
# _index/_id/_version/_shards/_seq_no of every document, which Elasticsearch would build and the worker parse)
BULK_FILTER_PATH = "errors,items.*.status,items.*.error"


@dataclass(frozen=True, slots=True)
class EncodedDoc:
    """A scored document and its JSON (``exclude_none``, UTF-8), written as is to Elasticsearch and Kafka."""

    doc: ScoredDocument
    body: bytes

    @classmethod
    def of(cls, doc: ScoredDocument) -> EncodedDoc:
        return cls(doc, doc.model_dump_json(exclude_none=True).encode("utf-8"))


@dataclass(frozen=True)
class RefusedSend:
    """A record its topic does not take (larger than its ``max.message.bytes``): sending it again cannot help."""

    ref: Any  # what the caller sent (an EncodedDoc or a DeadLetter)
    error: str


@dataclass(frozen=True)
class Rejected:
    doc: EncodedDoc
    status: int
    error: str


def es_action(doc: EncodedDoc, alias: str) -> tuple[dict[str, Any], bytes]:
    """The bulk action for a document: op_type index (a redelivery overwrites) into the month of ingested_at. The
    body goes into the request as it is (the client's NDJSON serializer passes bytes through)."""
    header = {"index": {"_index": index_for(alias, doc.doc.ingested_at), "_id": doc.doc.id}}
    return header, doc.body


class EsBulkSink:
    """Bulk-indexes scored documents; retries transient failures a few times, then raises SinkUnavailableError."""

    def __init__(
        self, client: Any, alias: str, metrics: WorkerMetrics | None = None, *, attempts: int = 3, timeout_s: float = 30
    ) -> None:
        self.client = client
        self.alias = alias
        self.metrics = metrics
        self.attempts = attempts
        self.timeout_s = timeout_s

    def write(self, docs: Sequence[EncodedDoc]) -> list[Rejected]:
        """Index ``docs``; return the documents Elasticsearch rejected for good (4xx other than 408/429)."""
        if not docs:
            return []
        from elastic_transport import ConnectionError as EsConnectionError
        from elastic_transport import ConnectionTimeout
        from elasticsearch import ApiError

        pending = list(docs)
        rejected: list[Rejected] = []

        @retry(
            retry=retry_if_exception_type(_TransientBulkError),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(initial=0.2, max=2.0),
            reraise=True,
        )
        def attempt() -> None:
            nonlocal pending
            ops: list[dict[str, Any] | bytes] = []
            for doc in pending:
                ops.extend(es_action(doc, self.alias))
            started = time.perf_counter()
            try:
                resp = self.client.options(request_timeout=self.timeout_s, max_retries=0).bulk(
                    operations=ops, filter_path=BULK_FILTER_PATH
                )
            except (EsConnectionError, ConnectionTimeout) as exc:
                raise _TransientBulkError(f"elasticsearch unreachable: {exc}") from exc
            except ApiError as exc:
                if exc.meta.status in TRANSIENT_STATUS:
                    raise _TransientBulkError(f"bulk request failed with HTTP {exc.meta.status}") from exc
                if exc.meta.status in REFUSED_REQUEST_STATUS:
                    raise _RefusedRequestError(exc.meta.status, _error_detail(exc.body, str(exc.message))) from exc
                raise
            finally:
                if self.metrics is not None:
                    self.metrics.es_bulk_seconds.observe(time.perf_counter() - started)
            if not resp.get("errors"):  # every item went through
                pending = []
                return
            retry_docs: list[EncodedDoc] = []
            last_error = ""
            for doc, item in zip(pending, resp["items"], strict=True):
                result = next(iter(item.values()))
                status = int(result.get("status", 500))
                if status < 300:
                    continue
                detail = _error_detail(result, "")
                if status in TRANSIENT_STATUS:
                    retry_docs.append(doc)
                    last_error = detail
                else:
                    rejected.append(Rejected(doc, status, detail))
            pending = retry_docs
            if retry_docs:
                raise _TransientBulkError(f"{len(retry_docs)} items failed transiently: {last_error}")

        try:
            attempt()
        except _TransientBulkError as exc:
            raise SinkUnavailableError(str(exc)) from exc
        except _RefusedRequestError as exc:
            if len(pending) == 1:
                log.warning("elasticsearch refused document %s: %s", pending[0].doc.id, exc)
                rejected.append(Rejected(pending[0], exc.status, exc.detail))
            else:
                half = len(pending) // 2
                log.info("elasticsearch refused a bulk request of %d documents (%s); halving it", len(pending), exc)
                rejected += self.write(pending[:half])
                rejected += self.write(pending[half:])
        return rejected


class KafkaOut:
    """Idempotent producer (acks=all) for scored documents and dead letters; ``flush`` checks every send."""

    def __init__(
        self,
        client: dict[str, Any],
        *,
        client_id: str = "riskstream-worker",
        dead_letter_max_bytes: int = 900_000,
        **overrides: Any,
    ) -> None:
        """``client``: where and how to connect (``riskstream.kafka_client.client_options``)."""
        from kafka import KafkaProducer

        config: dict[str, Any] = {
            **client,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "retries": 5,
            "compression_type": None,
            "max_request_size": 4 * 1024 * 1024,
        }
        config.update(overrides)
        self._config = config
        self.producer = KafkaProducer(**config)
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.limits: dict[str, int] = {}
        self.on_restart: Callable[[KafkaOut], None] | None = None  # e.g. read the topics' limits again
        self._sent: list[tuple[Any, Any, str]] = []  # (future, what was sent, topic)
        self._refused: list[RefusedSend] = []  # refused before sending (larger than the topic's limit)
        self._configured: set[str] = set()  # topics whose limit was read from the broker's configuration
        self._probing: set[str] = set()  # topics that refused a record and whose limit is unknown: one at a time

    def set_limits(self, limits: dict[str, int]) -> None:
        """Topic -> largest record batch the broker takes (``schemas.topics.max_message_bytes``)."""
        self.limits = dict(limits)
        self._configured = set(limits)

    def send(self, topic: str, key: str | None, value: bytes, ref: Any = None) -> None:
        key_bytes = key.encode("utf-8") if key else None
        limit = self.limits.get(topic)
        size = len(value) + len(key_bytes or b"") + RECORD_OVERHEAD_BYTES
        if limit is not None and size > limit:
            # refused here, not by the broker: an idempotent kafka-python producer turns a broker's refusal into a
            # fatal error that fails every later send
            error = f"the record would be about {size} bytes; topic {topic} takes at most {limit} (max.message.bytes)"
            self._refused.append(RefusedSend(ref, error))
            return
        future = self.producer.send(topic, key=key_bytes, value=value)
        if topic in self._probing:
            self._answer_alone(topic, future, size, ref)
        else:
            self._sent.append((future, ref, topic))

    def _answer_alone(self, topic: str, future: Any, size: int, ref: Any) -> None:
        """Wait for one record's answer (its topic refused a batch and its limit is unknown: without the
        DescribeConfigs permission the worker cannot read it). A record refused on its own is too large: its size
        becomes the topic's limit from now on (halved for the dead-letter topic, whose letters can be cut to fit),
        it is returned as refused, and the failed producer is replaced. Any other answer is left to :meth:`flush`."""
        try:
            self.producer.flush(timeout=30)
        except Exception as exc:  # kafka-python raises KafkaTimeoutError and friends
            raise SinkUnavailableError(f"kafka flush failed: {exc}") from exc
        if future.succeeded() or not isinstance(future.exception, SIZE_REFUSALS):
            self._sent.append((future, ref, topic))
            return
        learned = size // 2 if isinstance(ref, DeadLetter) else size - 1
        self.limits[topic] = min(self.limits.get(topic, learned), learned)
        log.warning(
            "topic %s refused a record of about %d bytes on its own and its max.message.bytes cannot be read: taking "
            "%d bytes as its limit until the worker restarts or can read it",
            topic, size, self.limits[topic],
        )  # fmt: skip
        error = (
            f"the broker refused the record of about {size} bytes on its own; topic {topic}'s max.message.bytes "
            f"cannot be read (DescribeConfigs), so the worker now holds it to {self.limits[topic]} bytes"
        )
        self._refused.append(RefusedSend(ref, error))
        self._restart_producer()

    def send_scored(self, topic: str, doc: EncodedDoc) -> None:
        self.send(topic, doc.doc.id, doc.body, ref=doc)

    def send_dead(self, topic: str, letter: DeadLetter) -> None:
        """A dead letter, cut to ``dead_letter_max_bytes`` or to what its topic takes, whichever is smaller."""
        key = letter.key or f"{letter.source_topic}-{letter.source_partition}-{letter.source_offset}"
        room = self.dead_letter_max_bytes
        if topic in self.limits:
            room = min(room, self.limits[topic] - RECORD_OVERHEAD_BYTES - len(key.encode("utf-8")))
        self.send(topic, key, fit_dead_letter(letter, max(room, 1024)), ref=letter)

    def flush(self, timeout_s: float = 30.0) -> list[RefusedSend]:
        """Block until every send since the last flush is answered. Return the records refused for what they are
        (larger than their topic takes, found before sending); raise SinkUnavailableError if any send failed. A
        record the broker itself refused (its limit was lowered after it was read) fails the idempotent producer
        for good: a new one is started before raising, and the retried batch meets the limit read again."""
        sent, self._sent = self._sent, []
        refused, self._refused = self._refused, []
        try:
            self.producer.flush(timeout=timeout_s)
        except Exception as exc:  # kafka-python raises KafkaTimeoutError and friends
            raise SinkUnavailableError(f"kafka flush failed: {exc}") from exc
        failed = [(future.exception, topic) for future, _, topic in sent if not future.succeeded()]
        if failed:
            too_large = {topic for exc, topic in failed if isinstance(exc, SIZE_REFUSALS)}
            if too_large:
                # the broker refused a record the size check let through (a limit lowered since it was read, or
                # never readable): the idempotent producer is now failed for good, so start a new one; the caller
                # retries the batch. A topic whose limit cannot be read takes the retry one record at a time, so
                # the refusal names the record
                self._probing |= too_large - self._configured
                self._restart_producer()
            raise SinkUnavailableError(f"{len(failed)} kafka sends failed: {failed[0][0]}")
        self._probing.clear()  # every record answered: back to batches
        return refused

    def _restart_producer(self) -> None:
        from kafka import KafkaProducer

        log.warning("kafka producer failed for good; starting a new one")
        try:
            self.producer.close(timeout=1)
        except Exception as exc:  # a failed producer may not close cleanly; it is dropped either way
            log.debug("closing the failed producer: %s", exc)
        self.producer = KafkaProducer(**self._config)
        if self.on_restart is not None:
            self.on_restart(self)

    def close(self) -> None:
        try:
            self.producer.flush(timeout=10)
        finally:
            self.producer.close(timeout=10)

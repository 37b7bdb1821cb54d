"""Output adapters of the worker: the Elasticsearch bulk writer and the Kafka producer.

Both follow the same small protocol: ``write``/``add`` a batch, ``flush``; a failure that may heal (ES down, 429,
5xx, broker unreachable) raises :class:`SinkUnavailableError`, and the worker keeps the batch, pauses and retries.
A document Elasticsearch refuses for good (a mapping rejection) is returned, not raised: it becomes a dead letter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from inference.metrics import WorkerMetrics
from schemas.es import index_for
from schemas.records import DeadLetter, ScoredDocument

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class SinkUnavailableError(RuntimeError):
    """A sink failed in a way that may heal; the batch must be retried, its offsets not committed."""


class _TransientBulkError(Exception):
    pass


@dataclass(frozen=True)
class Rejected:
    doc: ScoredDocument
    status: int
    error: str


def es_action(doc: ScoredDocument, alias: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bulk action for a document: op_type index (a redelivery overwrites) into the month of ingested_at."""
    header = {"index": {"_index": index_for(alias, doc.ingested_at), "_id": doc.id}}
    return header, doc.model_dump(mode="json", exclude_none=True)


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

    def write(self, docs: Sequence[ScoredDocument]) -> list[Rejected]:
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
            ops: list[dict[str, Any]] = []
            for doc in pending:
                ops.extend(es_action(doc, self.alias))
            started = time.perf_counter()
            try:
                resp = self.client.options(request_timeout=self.timeout_s, max_retries=0).bulk(operations=ops)
            except (EsConnectionError, ConnectionTimeout) as exc:
                raise _TransientBulkError(f"elasticsearch unreachable: {exc}") from exc
            except ApiError as exc:
                if exc.meta.status in TRANSIENT_STATUS:
                    raise _TransientBulkError(f"bulk request failed with HTTP {exc.meta.status}") from exc
                raise
            finally:
                if self.metrics is not None:
                    self.metrics.es_bulk_seconds.observe(time.perf_counter() - started)
            retry_docs: list[ScoredDocument] = []
            last_error = ""
            for doc, item in zip(pending, resp["items"], strict=True):
                result = next(iter(item.values()))
                status = int(result.get("status", 500))
                if status < 300:
                    continue
                error = result.get("error", {})
                if isinstance(error, dict):
                    detail = f"{error.get('type', '')}: {error.get('reason', '')}"
                else:
                    detail = str(error)
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
        return rejected


class KafkaOut:
    """Idempotent producer (acks=all) for scored documents and dead letters; ``flush`` checks every send."""

    def __init__(self, client: dict[str, Any], *, client_id: str = "riskstream-worker", **overrides: Any) -> None:
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
        self.producer = KafkaProducer(**config)
        self._futures: list[Any] = []

    def send(self, topic: str, key: str | None, value: bytes) -> None:
        self._futures.append(self.producer.send(topic, key=key.encode("utf-8") if key else None, value=value))

    def send_scored(self, topic: str, doc: ScoredDocument) -> None:
        self.send(topic, doc.id, doc.model_dump_json(exclude_none=True).encode("utf-8"))

    def send_dead(self, topic: str, letter: DeadLetter) -> None:
        key = letter.key or f"{letter.source_topic}-{letter.source_partition}-{letter.source_offset}"
        self.send(topic, key, letter.model_dump_json().encode("utf-8"))

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until every send since the last flush is acknowledged; raise SinkUnavailableError otherwise."""
        futures, self._futures = self._futures, []
        try:
            self.producer.flush(timeout=timeout_s)
        except Exception as exc:  # kafka-python raises KafkaTimeoutError and friends
            raise SinkUnavailableError(f"kafka flush failed: {exc}") from exc
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            raise SinkUnavailableError(f"{len(failed)} kafka sends failed: {failed[0].exception}")

    def close(self) -> None:
        try:
            self.producer.flush(timeout=10)
        finally:
            self.producer.close(timeout=10)

"""The ingest pipeline every source shares: redact, enrich, deduplicate, publish, then remember.

Order matters and is written down here once:

1. redact personal data of customer-service text (before anything else sees it, logs included);
2. enrich: ``ingested_at``, language, entities (on the redacted text);
3. deduplicate: drop re-delivered ids and exact duplicates, link near-duplicates to their story;
4. publish and wait for the broker's acknowledgement of every record;
5. only then commit the dedupe state (a document that never reached Kafka is not remembered as seen);
6. a document too large for the raw topic (found before sending) becomes a ``too_large`` dead letter, and is not
   remembered as seen either.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from ingest.dedupe import Deduper
from ingest.normalize import EntityTagger, LanguageDetector
from ingest.pii import Redactor
from ingest.publisher import AsyncSink, Delivery, Done, Sink, TooLarge, encode
from ingest.settings import IngestSettings
from riskstream.db import Database
from schemas.records import DeadLetter, RawDocument, utcnow

log = logging.getLogger(__name__)

POOL_CHUNK = 64


def prepare_document(
    doc: RawDocument, redactor: Redactor, tagger: EntityTagger, language: LanguageDetector
) -> RawDocument:
    """Redact (customer service) and enrich one document; the result is what may leave the process."""
    update: dict[str, Any] = {}
    text = doc.text
    title = doc.title
    if doc.channel == "customer_service":
        text, counts = redactor.redact(text)
        if title:
            title, title_counts = redactor.redact(title)
            for k, v in title_counts.items():
                counts[k] = counts.get(k, 0) + v
        if counts:
            merged = dict(doc.redactions)
            for k, v in counts.items():
                merged[k] = merged.get(k, 0) + v
            update.update(text=text, title=title, redactions=merged)
    if doc.ingested_at is None:
        update["ingested_at"] = utcnow()
    if doc.language is None:
        update["language"] = language.detect(text)
    if not doc.entities:
        update["entities"] = tagger.tag(f"{title}\n{text}" if title else text)
    return doc.model_copy(update=update) if update else doc


_WORKER: tuple[Redactor, EntityTagger, LanguageDetector] | None = None


def _pool_init(company_list: Path, sample_chars: int, language_backend: str) -> None:
    global _WORKER  # noqa: PLW0603 - one set of detectors per worker process, built once
    _WORKER = (Redactor(), EntityTagger.from_file(company_list), LanguageDetector(sample_chars, language_backend))


def _pool_prepare(docs: list[RawDocument]) -> list[RawDocument]:
    assert _WORKER is not None
    return [prepare_document(d, *_WORKER) for d in docs]


@dataclass
class IngestResult:
    published: list[RawDocument] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # ids dropped (exact duplicate or already seen)
    copies: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # id -> why it was dead-lettered (too large)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.published]


class Ingestor:
    def __init__(
        self,
        settings: IngestSettings,
        sink: Sink,
        *,
        db: Database | None = None,
        redactor: Redactor | None = None,
        tagger: EntityTagger | None = None,
        language: LanguageDetector | None = None,
        deduper: Deduper | None = None,
        dedupe: bool = True,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.redactor = redactor or Redactor()
        self.tagger = tagger or EntityTagger.from_file(settings.company_list)
        self.language = language or LanguageDetector(settings.language_sample_chars, settings.language_detector)
        if deduper is None and dedupe:
            deduper = Deduper(
                db,
                threshold=settings.near_dup_threshold,
                num_perm=settings.minhash_perm,
                shingle_words=settings.shingle_words,
                exact_channels=settings.exact_dedupe_channels,
                near_channels=settings.near_dedupe_channels,
                retention=timedelta(days=settings.dedupe_retention_days),
            )
        self.deduper = deduper
        self.totals: dict[str, int] = {
            "published": 0,
            "duplicates": 0,
            "copies": 0,
            "redacted_docs": 0,
            "too_large": 0,
        }
        self._pool: ProcessPoolExecutor | None = None
        if settings.prepare_workers > 1:
            # spawn, not fork: the parent holds a Kafka producer's threads and sockets
            self._pool = ProcessPoolExecutor(
                settings.prepare_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_pool_init,
                initargs=(settings.company_list, settings.language_sample_chars, settings.language_detector),
            )

    def prepare(self, doc: RawDocument) -> RawDocument:
        """Redact (customer service) and enrich one document; the result is what may leave the process."""
        return prepare_document(doc, self.redactor, self.tagger, self.language)

    def prepare_many(self, docs: Sequence[RawDocument]) -> list[RawDocument]:
        """``prepare`` for a batch, spread over the worker processes when there are several."""
        if self._pool is None or len(docs) < 2 * POOL_CHUNK:
            return [self.prepare(d) for d in docs]
        chunks = [list(docs[i : i + POOL_CHUNK]) for i in range(0, len(docs), POOL_CHUNK)]
        return [d for chunk in self._pool.map(_pool_prepare, chunks) for d in chunk]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def ingest(self, docs: Sequence[RawDocument]) -> IngestResult:
        """Prepare, deduplicate and publish; returns after the broker acknowledged every published document.

        Raises :class:`ingest.publisher.PublishError` when some were not acknowledged (their dedupe reservations
        are released, so a retry publishes them again).
        """
        result, ready = self._assess(docs)
        try:
            too_large = self.sink.publish(ready)
        except Exception:
            self._settle(result, ready, ok=False)
            raise
        self._settle(result, ready, ok=True, too_large=too_large)
        return result

    def submit(self, docs: Sequence[RawDocument]) -> PendingIngest:
        """:meth:`ingest` in two halves: prepare, deduplicate and hand over to the sink now; ``.wait()`` later.

        Lets a caller prepare the next batch while the broker acknowledges this one. The dedupe state is committed
        (or released) only in ``wait()``, after the acknowledgements, exactly as in :meth:`ingest`; a caller must
        call ``wait()`` on every pending ingest (a sink without a background sender publishes synchronously here).
        """
        result, ready = self._assess(docs)
        delivery: Delivery
        try:
            # a sink without a background sender publishes (and is answered) here
            delivery = self.sink.send(ready) if isinstance(self.sink, AsyncSink) else Done(self.sink.publish(ready))
        except Exception as exc:
            self._settle(result, ready, ok=False)
            return PendingIngest(self, result, ready, Done(), error=exc)
        return PendingIngest(self, result, ready, delivery)

    def _assess(self, docs: Sequence[RawDocument]) -> tuple[IngestResult, list[RawDocument]]:
        result = IngestResult()
        ready: list[RawDocument] = []
        for doc in self.prepare_many(docs):
            prepared = doc
            if prepared.redactions:
                self.totals["redacted_docs"] += 1
            if self.deduper is not None:
                verdict = self.deduper.assess(prepared)
                if verdict.verdict in ("duplicate", "seen_id"):
                    result.duplicates.append(prepared.id)
                    continue
                if prepared.channel in self.deduper.near_channels:
                    prepared = prepared.model_copy(
                        update={"story_id": verdict.story_id, "is_novel": verdict.verdict == "new"}
                    )
                    result.copies += verdict.verdict == "copy"
            ready.append(prepared)
        return result, ready

    def _settle(
        self, result: IngestResult, ready: list[RawDocument], *, ok: bool, too_large: Sequence[TooLarge] = ()
    ) -> None:
        """After the broker's answer: remember what was acknowledged, or release the reservations. Documents the
        sink did not send for their size are dead-lettered (and not remembered: they never reached the topic); a
        failure to dead-letter them raises :class:`ingest.publisher.PublishError` like a failed publish, after the
        acknowledged ones were remembered (a retry finds those already seen)."""
        if not ok:
            if self.deduper is not None:
                self.deduper.release([d.id for d in ready])
            return
        refused = {t.index: t for t in too_large}
        sent = [d for i, d in enumerate(ready) if i not in refused] if refused else ready
        if self.deduper is not None:
            self.deduper.commit([d.id for d in sent])
        result.published = sent
        self.totals["published"] += len(sent)
        self.totals["duplicates"] += len(result.duplicates)
        self.totals["copies"] += result.copies
        if refused:
            self._dead_letter_too_large(result, [(ready[i], t) for i, t in sorted(refused.items())])

    def _dead_letter_too_large(self, result: IngestResult, refused: list[tuple[RawDocument, TooLarge]]) -> None:
        letters = [
            DeadLetter(
                reason="too_large",
                error=f"too_large: {t.error} (max.message.bytes, or --max-record-bytes)",
                stage="ingest",
                key=doc.id,
                payload=encode(doc).decode("utf-8"),  # prepared: personal data already redacted
            )
            for doc, t in refused
        ]
        try:
            self.sink.dead_letter(letters)
        finally:
            if self.deduper is not None:
                self.deduper.release([doc.id for doc, _ in refused])
        for doc, t in refused:
            result.rejected[doc.id] = f"too_large: {t.error}"
            log.warning("document %s not published: %s; sent to the dead-letter topic", doc.id, t.error)
        self.totals["too_large"] += len(refused)


class PendingIngest:
    """A batch handed to the sink; :meth:`wait` returns its :class:`IngestResult` once every record was acked."""

    def __init__(
        self,
        ingestor: Ingestor,
        result: IngestResult,
        ready: list[RawDocument],
        delivery: Delivery,
        *,
        error: Exception | None = None,
    ) -> None:
        self._ingestor = ingestor
        self._result = result
        self._ready = ready
        self._delivery = delivery
        self._error = error
        self._settled = error is not None
        self.size = len(ready) + len(result.duplicates)

    def wait(self) -> IngestResult:
        """Raises :class:`ingest.publisher.PublishError` (reservations released) like :meth:`Ingestor.ingest`."""
        if self._error is not None:
            raise self._error
        if not self._settled:
            try:
                too_large = self._delivery.wait()
            except Exception as exc:
                self._error = exc
                self._settled = True
                self._ingestor._settle(self._result, self._ready, ok=False)
                raise
            self._settled = True
            try:  # dead-lettering what was too large can fail too: report it on every wait, as a failed publish
                self._ingestor._settle(self._result, self._ready, ok=True, too_large=too_large)
            except Exception as exc:
                self._error = exc
                raise
        return self._result

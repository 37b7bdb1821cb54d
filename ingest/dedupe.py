"""Exact and near-duplicate detection with state that survives restarts.

- Exact: SHA-256 of the normalised text (case-folded, whitespace collapsed) per channel; a repeat is dropped.
- Near: datasketch MinHash over word shingles, indexed in a MinHashLSH; a document similar to an earlier one
  (estimated Jaccard >= threshold) is a syndicated copy: ``story_id`` = the first document's id and
  ``is_novel`` = False. Copies are still published, linked.
- Re-delivery: a document id already seen is dropped (a re-crawl or a re-sent message).

Protocol: :meth:`Deduper.assess` decides and reserves in memory; after the broker acknowledged the documents the
caller calls :meth:`commit` (rows in ``seen_documents``), or :meth:`release` when publishing failed, so a document
that never reached Kafka is not remembered as seen. At start the in-memory index is rebuilt from the rows of the
retention window.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
from datasketch import MinHash, MinHashLSH
from sqlalchemy import select

from riskstream.db import Database
from schemas.db import SeenDocumentRow
from schemas.records import RawDocument

log = logging.getLogger(__name__)

# datasketch 2.x names the permutation scheme; stored signatures are only comparable within one scheme
MINHASH_SCHEME = "affine32"
WORD_RE = re.compile(r"\w+", re.UNICODE)
Verdict = Literal["new", "copy", "duplicate", "seen_id"]


def normalized_text(text: str) -> str:
    return " ".join(WORD_RE.findall(text.casefold()))


def content_hash(channel: str, text: str) -> str:
    return hashlib.sha256(f"{channel}\x00{normalized_text(text)}".encode()).hexdigest()


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    story_id: str | None = None
    duplicate_of: str | None = None


@dataclass
class _Pending:
    doc_id: str
    channel: str
    content_hash: str
    story_id: str
    minhash: MinHash | None


class Deduper:
    def __init__(
        self,
        db: Database | None,
        *,
        threshold: float = 0.7,
        num_perm: int = 128,
        shingle_words: int = 3,
        exact_channels: Sequence[str] = ("news",),
        near_channels: Sequence[str] = ("news",),
        retention: timedelta = timedelta(days=14),
    ) -> None:
        self.db = db
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_words = shingle_words
        self.exact_channels = frozenset(exact_channels)
        self.near_channels = frozenset(near_channels)
        self.retention = retention
        self._lock = threading.Lock()
        self._ids: dict[str, str] = {}  # doc id -> story id
        self._hashes: dict[str, str] = {}  # content hash -> doc id
        self._lsh: dict[str, MinHashLSH] = {}
        self._pending: dict[str, _Pending] = {}
        self._order: dict[str, int] = {}  # doc id -> arrival rank (the earliest candidate names the story)
        self._counter = 0
        self.counts: dict[str, int] = {"new": 0, "copy": 0, "duplicate": 0, "seen_id": 0}
        # the permutations depend only on num_perm and the seed: drawn once, not again for every document (datasketch
        # would otherwise regenerate them per MinHash, about a fifth of the cost of hashing a 1 KB document)
        self._permutations = MinHash(num_perm=num_perm, scheme=MINHASH_SCHEME).permutations
        if db is not None:
            self._load()

    # ---- state ----------------------------------------------------------------------------------------------

    def _index(self, channel: str) -> MinHashLSH:
        if channel not in self._lsh:
            self._lsh[channel] = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        return self._lsh[channel]

    def _load(self) -> None:
        assert self.db is not None
        since = datetime.now(tz=UTC) - self.retention
        n = 0
        with self.db.session() as session:
            rows = session.execute(
                select(
                    SeenDocumentRow.doc_id,
                    SeenDocumentRow.channel,
                    SeenDocumentRow.content_hash,
                    SeenDocumentRow.story_id,
                    SeenDocumentRow.minhash,
                )
                .where(SeenDocumentRow.seen_at >= since)
                .order_by(SeenDocumentRow.seen_at)
            )
            for doc_id, channel, chash, story_id, blob in rows:
                self._ids[doc_id] = story_id
                self._order[doc_id] = self._next_order()
                self._hashes.setdefault(chash, doc_id)
                if blob and channel in self.near_channels:
                    values = np.frombuffer(blob, dtype=np.uint64)
                    if len(values) == self.num_perm:
                        self._index(channel).insert(doc_id, self._minhash_of(values))
                n += 1
        log.info("dedupe state loaded: %d documents of the last %s", n, self.retention)

    def _minhash_of(self, values: np.ndarray) -> MinHash:
        return MinHash(hashvalues=values, scheme=MINHASH_SCHEME, permutations=self._permutations)

    def minhash(self, text: str) -> MinHash:
        words = WORD_RE.findall(text.casefold())
        k = self.shingle_words
        shingles = {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}
        mh = MinHash(num_perm=self.num_perm, scheme=MINHASH_SCHEME, permutations=self._permutations)
        mh.update_batch([s.encode("utf-8") for s in shingles])
        return mh

    def seen(self, doc_id: str) -> bool:
        with self._lock:
            return doc_id in self._ids or doc_id in self._pending

    # ---- protocol -------------------------------------------------------------------------------------------

    def assess(self, doc: RawDocument) -> Assessment:
        """Classify a document and reserve it (call :meth:`commit` or :meth:`release` afterwards)."""
        with self._lock:
            if doc.id in self._ids or doc.id in self._pending:
                self.counts["seen_id"] += 1
                return Assessment("seen_id", story_id=self._ids.get(doc.id))
            chash = content_hash(doc.channel, doc.text)
            if doc.channel in self.exact_channels and chash in self._hashes:
                self.counts["duplicate"] += 1
                return Assessment("duplicate", duplicate_of=self._hashes[chash])
            story_id = doc.id
            verdict: Verdict = "new"
            mh: MinHash | None = None
            if doc.channel in self.near_channels:
                mh = self.minhash(doc.text)
                index = self._index(doc.channel)
                candidates = [c for c in index.query(mh) if c in self._ids or c in self._pending]
                if candidates:
                    first = min(candidates, key=lambda c: self._order.get(c, 0))
                    story_id = self._ids.get(first) or self._pending[first].story_id
                    verdict = "copy"
                index.insert(doc.id, mh)
            self._pending[doc.id] = _Pending(doc.id, doc.channel, chash, story_id, mh)
            self._order[doc.id] = self._next_order()
            if doc.channel in self.exact_channels:
                self._hashes.setdefault(chash, doc.id)
            self.counts[verdict] += 1
            return Assessment(verdict, story_id=story_id)

    def _next_order(self) -> int:
        self._counter += 1
        return self._counter

    def commit(self, doc_ids: Sequence[str]) -> None:
        """Persist the reserved documents (their publication was acknowledged)."""
        with self._lock:
            pending = [self._pending.pop(i) for i in doc_ids if i in self._pending]
            for p in pending:
                self._ids[p.doc_id] = p.story_id
        if self.db is None or not pending:
            return
        now = datetime.now(tz=UTC)
        with self.db.session() as session, session.begin():
            for p in pending:
                session.merge(
                    SeenDocumentRow(
                        doc_id=p.doc_id,
                        channel=p.channel,
                        content_hash=p.content_hash,
                        story_id=p.story_id,
                        minhash=p.minhash.hashvalues.astype(np.uint64).tobytes() if p.minhash is not None else None,
                        seen_at=now,
                    )
                )

    def release(self, doc_ids: Sequence[str]) -> None:
        """Forget reservations whose publication failed (they may be retried later)."""
        with self._lock:
            for doc_id in doc_ids:
                p = self._pending.pop(doc_id, None)
                if p is None:
                    continue
                self._order.pop(doc_id, None)
                if self._hashes.get(p.content_hash) == doc_id:
                    del self._hashes[p.content_hash]
                if p.minhash is not None and p.channel in self._lsh:
                    self._lsh[p.channel].remove(doc_id)

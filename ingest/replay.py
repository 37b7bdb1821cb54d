"""Replay a seed dataset as raw documents (demo traffic and the ingest benchmark).

Ids are ``{dataset}-{split}-{row}`` (the dataset's own stable row number), so replaying twice overwrites
downstream instead of duplicating. The channel follows the dataset (banking77 and cs_sentiment are customer
service, the others news); customer-service rows are PII-redacted like any other customer text.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ingest.pipeline import Ingestor, PendingIngest
from schemas.records import RawDocument

log = logging.getLogger(__name__)

CS_DATASETS = frozenset({"banking77", "cs_sentiment"})
SPLITS = ("train", "dev", "test")


def channel_for(dataset: str) -> str:
    return "customer_service" if dataset in CS_DATASETS else "news"


class TokenBucket:
    """``rate`` tokens per second, bursts up to ``burst``; ``acquire`` blocks until ``n`` tokens are available."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 10)
        self.tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self, n: float = 1.0) -> None:
        with self._lock:
            while True:
                now = self._clock()
                self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
                self._last = now
                if self.tokens >= n or (n > self.capacity and self.tokens >= self.capacity):
                    self.tokens -= n
                    return
                self._sleep((min(n, self.capacity) - self.tokens) / self.rate)


def dataset_path(seed_dir: Path, dataset: str, split: str) -> Path:
    path = seed_dir / dataset / f"{split}.csv"
    if not path.is_file():
        available = sorted(p.name for p in seed_dir.iterdir() if p.is_dir())
        raise FileNotFoundError(f"no {split} split for dataset {dataset!r} at {path}; datasets: {available}")
    return path


def iter_rows(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """``(row number, text, label)`` of the rows with a non-blank text (row numbers count every data row)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)  # not DictReader: a dict per row costs more than the rest of the row's handling
        header = next(reader, None)
        if header is None:
            return
        if "text" not in header:
            raise ValueError(f"{path}: no 'text' column in the header {header}")
        text_at = header.index("text")
        label_at = header.index("label") if "label" in header else None
        # blank lines are not rows (as csv.DictReader skips them): row numbers, hence ids, stay the same
        for row_no, row in enumerate(filter(None, reader)):
            text = row[text_at].strip() if text_at < len(row) else ""
            if text:
                label = row[label_at] if label_at is not None and label_at < len(row) else None
                yield row_no, text, label


def replay_documents(seed_dir: Path, dataset: str, split: str, *, min_chars: int = 0) -> Iterator[RawDocument]:
    """The dataset's rows as documents. ``min_chars`` > 0 joins consecutive rows into bigger documents (bench)."""
    channel = channel_for(dataset)
    path = dataset_path(seed_dir, dataset, split)
    source = f"replay:{dataset}"
    parts: list[str] = []
    joined_chars = 0
    first_row = 0
    for row_no, text, label in iter_rows(path):
        if min_chars <= 0:
            yield RawDocument(
                id=f"{dataset}-{split}-{row_no}",
                channel=channel,
                source=source,
                text=text,
                metadata={"dataset": dataset, "split": split, "gold_label": label},
            )
            continue
        if not parts:
            first_row = row_no
        parts.append(text)
        joined_chars += len(text) + 1
        if joined_chars >= min_chars:
            yield RawDocument(
                id=f"{dataset}-{split}-{first_row}-{row_no}",
                channel=channel,
                source=source,
                text=" ".join(parts),
                metadata={"dataset": dataset, "split": split},
            )
            parts = []
            joined_chars = 0


@dataclass
class ReplayStats:
    documents: int = 0
    published: int = 0
    duplicates: int = 0
    too_large: int = 0  # dead-lettered: larger than the raw topic takes
    bytes: int = 0
    seconds: float = 0.0

    @property
    def docs_per_s(self) -> float:
        return self.published / self.seconds if self.seconds else 0.0


def replay(
    ingestor: Ingestor,
    seed_dir: Path,
    dataset: str,
    *,
    split: str = "train",
    rate: float | None = None,
    limit: int | None = None,
    loop: bool = False,
    batch_size: int = 500,
    min_chars: int = 0,
    progress: bool = True,
    stop: Callable[[], bool] = lambda: False,
) -> ReplayStats:
    """Publish the dataset through the ingest pipeline.

    One batch is in flight while the next is prepared (the broker acknowledges batch N while this process redacts
    and enriches batch N+1); every batch's acknowledgements are checked before it counts as published, and before
    this function returns. A batch the broker did not acknowledge raises :class:`ingest.publisher.PublishError`
    (after the batch still in flight was waited for too).
    """
    bucket = TokenBucket(rate, burst=max(1.0, min(rate, batch_size))) if rate else None
    stats = ReplayStats()
    batch: list[RawDocument] = []
    in_flight: list[PendingIngest] = []
    started = time.perf_counter()
    bar = tqdm(total=limit, unit="doc", desc=f"replay {dataset}", disable=not progress)

    def settle(pending: PendingIngest) -> None:
        result = pending.wait()
        stats.published += len(result.published)
        stats.duplicates += len(result.duplicates)
        stats.too_large += len(result.rejected)
        bar.update(pending.size)

    def flush() -> None:
        if not batch:
            return
        in_flight.append(ingestor.submit(batch))
        batch.clear()
        while len(in_flight) > 1:
            settle(in_flight.pop(0))

    def drain() -> None:
        errors: list[Exception] = []
        while in_flight:
            try:
                settle(in_flight.pop(0))
            except Exception as exc:  # wait for every batch in flight, then report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]

    try:
        while True:
            produced_this_pass = 0
            for doc in replay_documents(seed_dir, dataset, split, min_chars=min_chars):
                if stop() or (limit is not None and stats.documents >= limit):
                    break
                if bucket is not None:
                    bucket.acquire()
                batch.append(doc)
                stats.documents += 1
                stats.bytes += len(doc.text.encode("utf-8"))
                produced_this_pass += 1
                if len(batch) >= (batch_size if bucket is None else max(1, min(batch_size, int(rate or 1) // 10))):
                    flush()
            flush()
            if not loop or stop() or produced_this_pass == 0 or (limit is not None and stats.documents >= limit):
                break
        drain()
    except BaseException:
        with contextlib.suppress(Exception):
            drain()  # a failure of one batch must not leave the next one unchecked (or its dedupe state hanging)
        raise
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - started
    return stats

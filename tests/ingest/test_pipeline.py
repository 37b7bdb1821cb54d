"""The pipeline's two-phase protocol (submit now, wait later) and replay's one-batch-in-flight overlap.

A sink double with a background "sender" stands in for the producer here: these tests are about the order of
events and the dedupe bookkeeping, not about Kafka (``test_kafka.py`` runs the same path against the broker).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from kafka.partitioner.default import murmur2

from ingest.pipeline import Ingestor
from ingest.publisher import AsyncSink, ListSink, PublishError, TooLarge, murmur2_many, partitions_for_keys
from ingest.replay import replay
from ingest.settings import IngestSettings
from riskstream.db import Database
from schemas.records import DeadLetter, RawDocument


class _Delivery:
    def __init__(self, sink: _AsyncListSink, docs: list[RawDocument], fail: bool) -> None:
        self.sink, self.docs, self.fail = sink, docs, fail

    def wait(self) -> list[TooLarge]:
        self.sink.events.append(("wait", self.docs[0].id if self.docs else ""))
        if self.fail:
            raise PublishError({d.id: "simulated: not acknowledged" for d in self.docs})
        self.sink.acked.extend(self.docs)
        return []


class _AsyncListSink:
    """Records what was sent and waited for; ``fail_batches`` are the 0-based sends whose acks fail."""

    def __init__(self, fail_batches: frozenset[int] = frozenset()) -> None:
        self.events: list[tuple[str, str]] = []
        self.acked: list[RawDocument] = []
        self.fail_batches = fail_batches
        self.sends = 0

    def send(self, docs: Sequence[RawDocument]) -> _Delivery:
        self.events.append(("send", docs[0].id if docs else ""))
        delivery = _Delivery(self, list(docs), self.sends in self.fail_batches)
        self.sends += 1
        return delivery

    def publish(self, docs: Sequence[RawDocument]) -> list[TooLarge]:
        return self.send(docs).wait()

    def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        return None

    def close(self) -> None:
        return None


def _news(i: int, text: str | None = None) -> RawDocument:
    return RawDocument(id=f"n{i}", channel="news", source="t", text=text or f"Story number {i} about the markets.")


def _seed(tmp_path: Path, rows: int) -> Path:
    (tmp_path / "seed" / "financial_phrasebank").mkdir(parents=True)
    lines = ["text,label"] + [f"Company {i} reported results for quarter {i},neutral" for i in range(rows)]
    (tmp_path / "seed" / "financial_phrasebank" / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "seed"


def test_the_double_is_an_async_sink_and_the_list_sink_is_not() -> None:
    assert isinstance(_AsyncListSink(), AsyncSink)
    assert not isinstance(ListSink(), AsyncSink)


def test_submit_commits_dedupe_state_only_after_the_acks(ingest_settings: IngestSettings, db: Database) -> None:
    sink = _AsyncListSink(fail_batches=frozenset({0}))
    ingestor = Ingestor(ingest_settings, sink, db=db)
    pending = ingestor.submit([_news(1), _news(2)])
    assert sink.acked == [] and ingestor.totals["published"] == 0  # handed over, not yet acknowledged
    with pytest.raises(PublishError):
        pending.wait()
    with pytest.raises(PublishError):
        pending.wait()  # the same answer again, and the reservations are released once
    assert ingestor.totals["published"] == 0
    # released: the same documents are publishable again (not taken for re-deliveries)
    result = ingestor.submit([_news(1), _news(2)]).wait()
    assert [d.id for d in result.published] == ["n1", "n2"] and result.duplicates == []
    assert [d.id for d in sink.acked] == ["n1", "n2"]
    # acknowledged: now they are remembered, also by a new process on the same database
    again = Ingestor(ingest_settings, ListSink(), db=db).ingest([_news(1)])
    assert again.duplicates == ["n1"] and again.published == []


def test_submit_on_a_plain_sink_publishes_synchronously(ingestor: Ingestor, sink: ListSink) -> None:
    sink.fail_next = 1
    failed = ingestor.submit([_news(1)])
    assert sink.docs == []
    with pytest.raises(PublishError):
        failed.wait()
    ok = ingestor.submit([_news(1)])
    assert [d.id for d in sink.docs] == ["n1"]  # published before wait() is even called
    assert [d.id for d in ok.wait().published] == ["n1"]


class _DeadLetterDown(ListSink):
    def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        raise PublishError({dl.key or "?": "simulated: dead-letter topic unavailable" for dl in letters})


def test_a_too_large_document_whose_dead_letter_fails_is_reported_and_not_remembered(
    ingest_settings: IngestSettings, db: Database
) -> None:
    sink = _DeadLetterDown()
    sink.max_record_bytes = 2_000
    ingestor = Ingestor(ingest_settings, sink, db=db)
    pending = ingestor.submit([_news(1), _news(2, "x " * 2_000)])
    for _ in range(2):  # on every wait, as a failed publish would be
        with pytest.raises(PublishError):
            pending.wait()
    assert [d.id for d in sink.docs] == ["n1"]
    # the published one is remembered, the refused one is not: a retry publishes nothing twice and tries n2 again
    sink.max_record_bytes = None
    retried = ingestor.ingest([_news(1), _news(2, "x " * 2_000)])
    assert retried.duplicates == ["n1"] and retried.ids == ["n2"]


def test_replay_prepares_the_next_batch_while_the_previous_one_is_acknowledged(
    ingest_settings: IngestSettings, tmp_path: Path
) -> None:
    seed = _seed(tmp_path, 10)
    sink = _AsyncListSink()
    ingestor = Ingestor(ingest_settings, sink, db=None, dedupe=False)
    stats = replay(ingestor, seed, "financial_phrasebank", batch_size=4, progress=False)
    first_ids = ["financial_phrasebank-train-0", "financial_phrasebank-train-4", "financial_phrasebank-train-8"]
    # batch 2 is sent before batch 1 is waited for; every batch is waited for before replay returns
    assert sink.events == [
        ("send", first_ids[0]),
        ("send", first_ids[1]),
        ("wait", first_ids[0]),
        ("send", first_ids[2]),
        ("wait", first_ids[1]),
        ("wait", first_ids[2]),
    ]
    assert stats.documents == stats.published == 10
    assert [d.id for d in sink.acked] == [f"financial_phrasebank-train-{i}" for i in range(10)]


def test_replay_failure_still_waits_for_the_batch_in_flight(ingest_settings: IngestSettings, tmp_path: Path) -> None:
    seed = _seed(tmp_path, 10)
    sink = _AsyncListSink(fail_batches=frozenset({0}))
    ingestor = Ingestor(ingest_settings, sink, db=None, dedupe=False)
    with pytest.raises(PublishError, match=r"^4 record"):
        replay(ingestor, seed, "financial_phrasebank", batch_size=4, progress=False)
    # batch 1 failed while batch 2 was in flight: batch 2 was still checked (and acknowledged), none is left open
    assert [e for e in sink.events if e[0] == "wait"] == [
        ("wait", "financial_phrasebank-train-0"),
        ("wait", "financial_phrasebank-train-4"),
    ]
    assert [d.id for d in sink.acked] == [f"financial_phrasebank-train-{i}" for i in range(4, 8)]


def test_batch_murmur2_is_kafkas_murmur2() -> None:
    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))) for _ in range(2000)]
    keys += [b"", "zendesk:T-\u00fc\u20ac".encode(), b"financial_phrasebank-train-0-9", b"a" * 64]
    assert murmur2_many(keys).tolist() == [murmur2(k) for k in keys]
    assert partitions_for_keys(keys, [2, 0, 1]) == [(murmur2(k) & 0x7FFFFFFF) % 3 for k in keys]
    assert murmur2_many([]).tolist() == []

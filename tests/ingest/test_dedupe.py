"""Exact duplicates dropped, syndicated copies linked to the first story, state kept across restarts."""

from __future__ import annotations

import numpy as np
from datasketch import MinHash

from ingest.dedupe import MINHASH_SCHEME, Deduper
from ingest.pipeline import Ingestor
from ingest.publisher import ListSink, PublishError
from ingest.settings import IngestSettings
from riskstream.db import Database
from schemas.records import RawDocument
from tests.ingest.site import OTHER_STORY, STORY


def _news(doc_id: str, text: str) -> RawDocument:
    return RawDocument(id=doc_id, channel="news", source="test", text=text)


def test_exact_duplicate_dropped_and_copy_linked(ingestor: Ingestor, sink: ListSink) -> None:
    copy = "Reuters - " + STORY.replace("Tuesday", "Tuesday, sources said,")
    result = ingestor.ingest(
        [
            _news("a", STORY),
            _news("b", "  " + STORY.upper() + " "),  # exact duplicate after normalisation
            _news("c", copy),
            _news("d", OTHER_STORY),
        ]
    )
    assert result.duplicates == ["b"]
    by_id = {d.id: d for d in sink.docs}
    assert set(by_id) == {"a", "c", "d"}
    assert by_id["a"].story_id == "a" and by_id["a"].is_novel is True
    assert by_id["c"].story_id == "a" and by_id["c"].is_novel is False
    assert by_id["d"].story_id == "d" and by_id["d"].is_novel is True


def test_state_survives_a_restart(ingest_settings: IngestSettings, db: Database) -> None:
    first = Ingestor(ingest_settings, ListSink(), db=db)
    first.ingest([_news("a", STORY)])
    sink = ListSink()
    restarted = Ingestor(ingest_settings, sink, db=db)  # a new process: LSH rebuilt from seen_documents
    result = restarted.ingest([_news("a", STORY), _news("z", STORY + " Shares recovered later.")])
    assert result.duplicates == ["a"]
    assert [(d.id, d.story_id, d.is_novel) for d in sink.docs] == [("z", "a", False)]


def test_failed_publish_is_not_remembered(ingest_settings: IngestSettings, db: Database) -> None:
    sink = ListSink()
    sink.fail_next = 1
    ingestor = Ingestor(ingest_settings, sink, db=db)
    try:
        ingestor.ingest([_news("a", STORY)])
    except PublishError as exc:
        assert set(exc.failed) == {"a"}
    else:
        raise AssertionError("the failure must surface")
    result = ingestor.ingest([_news("a", STORY)])  # the retry publishes it: nothing was lost
    assert result.ids == ["a"] and sink.docs[0].is_novel is True


def test_customer_messages_with_same_words_are_both_kept(ingestor: Ingestor, sink: ListSink) -> None:
    docs = [RawDocument(id=f"push:{i}", channel="customer_service", text="My card was blocked again!") for i in (1, 2)]
    assert ingestor.ingest(docs).ids == ["push:1", "push:2"]


def test_deduper_without_store_orders_story_by_arrival() -> None:
    deduper = Deduper(None, threshold=0.5)
    assert deduper.assess(_news("x", STORY)).verdict == "new"
    second = deduper.assess(_news("y", STORY + " More."))
    third = deduper.assess(_news("w", STORY + " Even more text here."))
    assert (second.verdict, second.story_id) == ("copy", "x")
    assert (third.verdict, third.story_id) == ("copy", "x")


def test_signatures_match_a_fresh_minhash_so_stored_state_stays_comparable() -> None:
    # the deduper draws the permutations once; a signature must equal datasketch's own for the same scheme and seed
    text = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007."
    deduper = Deduper(None)
    words = text.casefold().replace(".", " ").split()
    reference = MinHash(num_perm=128, scheme=MINHASH_SCHEME)
    reference.update_batch([" ".join(words[i : i + 3]).encode() for i in range(len(words) - 2)])
    assert np.array_equal(deduper.minhash(text).hashvalues, reference.hashvalues)

"""Ids, times and entities of the raw-document contract."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from ingest.normalize import (
    EntityTagger,
    LanguageDetector,
    canonical_url,
    load_companies,
    message_id,
    news_id,
    parse_datetime,
    struct_time_to_utc,
)
from ingest.settings import DATA_DIR


def test_canonical_url_drops_tracking_and_fragment_and_sorts_query() -> None:
    a = "HTTPS://News.Example.COM:443/markets/story?b=2&utm_source=x&a=1&fbclid=zz#comments"
    assert canonical_url(a) == "https://news.example.com/markets/story?a=1&b=2"
    assert news_id(a) == news_id("https://news.example.com/markets/story?a=1&b=2")
    assert news_id(a) != news_id("https://news.example.com/markets/story?a=1&b=3")


def test_message_ids_are_namespaced_or_random_never_text_hashes() -> None:
    assert message_id("zendesk", 42) == "zendesk:42"
    assert message_id("zendesk", 42) != message_id("crm", 42)
    first, second = message_id("push", None), message_id("push", "")
    assert first != second  # two customers writing the same words are two documents


def test_times_are_utc() -> None:
    assert parse_datetime("2026-11-20T08:30:00+01:00") == datetime(2026, 11, 20, 7, 30, tzinfo=UTC)
    assert parse_datetime("Fri, 20 Nov 2026 08:30:00 -0500") == datetime(2026, 11, 20, 13, 30, tzinfo=UTC)
    assert parse_datetime("2026-11-20") == datetime(2026, 11, 20, tzinfo=UTC)
    assert parse_datetime("not a date") is None
    assert struct_time_to_utc(time.gmtime(0)) == datetime(1970, 1, 1, tzinfo=UTC)


def test_entities_cashtags_and_companies_from_the_list() -> None:
    tagger = EntityTagger(load_companies(DATA_DIR / "companies.txt"))
    entities = tagger.tag("Goldman Sachs cut its target on Apple; $AAPL and $tsla fell, Applebee's did not.")
    found = {(e.type, e.value) for e in entities}
    assert ("cashtag", "$AAPL") in found and ("cashtag", "$TSLA") in found
    assert ("company", "Goldman Sachs Group Inc.") in found and ("company", "Apple Inc.") in found
    assert len([e for e in entities if e.value == "Apple Inc."]) == 1  # "Applebee's" is not Apple


def test_language() -> None:
    detector = LanguageDetector(400)
    assert detector.detect("Shares of the bank fell sharply after the results were published.") == "en"
    assert detector.detect("Die Aktie der Bank fiel nach der Veröffentlichung der Ergebnisse deutlich.") == "de"

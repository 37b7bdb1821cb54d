"""Ids, times and entities of the raw-document contract."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.normalize import (
    Company,
    EntityTagger,
    LanguageDetector,
    canonical_url,
    load_companies,
    message_id,
    news_id,
    parse_datetime,
    struct_time_to_utc,
)
from ingest.replay import replay_documents
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


def test_companies_are_whole_words_even_when_a_non_word_match_comes_first() -> None:
    tagger = EntityTagger([Company("Foo Bar Corp", ("Foo Bar",)), Company("Bar Baz Ltd", ("Bar Baz",))])
    # "xFoo Bar" is inside a word; the real match "Bar Baz" starts inside that rejected span and must be found
    assert {e.value for e in tagger.tag("xFoo Bar Baz rose")} == {"Bar Baz Ltd"}
    assert {e.value for e in tagger.tag("Foo Bar_x and (Foo Bar) and Bar Baz.")} == {"Foo Bar Corp", "Bar Baz Ltd"}
    assert tagger.tag("ÉFoo Bar, 1Bar Baz, Foo Barré") == []  # letters and digits of any script bind words
    assert {(e.type, e.value) for e in tagger.tag("$Foo Bar")} == {("cashtag", "$FOO"), ("company", "Foo Bar Corp")}


@pytest.mark.parametrize("backend", ["cld2", "py3langid"])
def test_language(backend: str) -> None:
    detector = LanguageDetector(400, backend)
    assert detector.detect("Shares of the bank fell sharply after the results were published.") == "en"
    assert detector.detect("Die Aktie der Bank fiel nach der Veröffentlichung der Ergebnisse deutlich.") == "de"
    assert detector.detect("  ") is None


def test_language_survives_text_cld2_refuses() -> None:
    detector = LanguageDetector(200)
    # a C1 control character (mojibake of a curly quote) and a lone surrogate: CLD2 raises on both
    assert detector.detect("Stocks bounced today on positive news \x9d here is what three experts say") == "en"
    assert detector.detect("The bank \ud800 reported higher quarterly profits than analysts expected") == "en"
    assert detector.detect("12345 67890 %%% ---") is None  # nothing to call: unknown, not a guess
    with pytest.raises(ValueError, match="unknown language backend"):
        LanguageDetector(200, "fasttext")


def test_replay_row_numbers_ignore_blank_lines_and_need_a_text_column(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "train.csv").write_text(
        'text,label\nfirst,a\n\n"second, quoted",b\n   ,c\nfourth\n', encoding="utf-8"
    )
    docs = list(replay_documents(tmp_path, "tiny", "train"))
    assert [(d.id, d.text, d.metadata.get("gold_label")) for d in docs] == [
        ("tiny-train-0", "first", "a"),
        ("tiny-train-1", "second, quoted", "b"),
        ("tiny-train-3", "fourth", None),
    ]
    (tmp_path / "tiny" / "dev.csv").write_text("body,label\nx,a\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no 'text' column"):
        list(replay_documents(tmp_path, "tiny", "dev"))

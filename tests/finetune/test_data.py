"""Training data: bad rows counted, labels mapped, analyst labels included, label-set changes refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.data import (
    DataError,
    check_label_sets,
    load_training_data,
    read_split,
)
from riskstream.db import Database
from riskstream.modeling import TaskSpec
from schemas.db import LabelRow
from tests.finetune.conftest import seed_root, write_csv


def test_read_split_skips_and_counts_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes(
        b"text,label\r\n"
        b"Shares jumped after the results,bullish\r\n"
        b"   ,bearish\r\n"  # blank text
        b"no label here,\r\n"  # blank label
        b"too,many,fields\r\n"  # malformed
        b'"quoted, with a comma",Bearish\r\n'
        b"stocks are fine,sideways\r\n"  # unknown label, reported by the caller
    )
    pairs, stats = read_split(path, {"bearish": "negative", "bullish": "positive"})
    assert pairs == [
        ("Shares jumped after the results", "positive"),
        ("quoted, with a comma", "negative"),
        ("stocks are fine", "sideways"),
    ]
    assert (stats.rows, stats.empty, stats.malformed) == (6, 2, 1)


def test_missing_header_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("sentence,target\r\nhello,positive\r\n", encoding="utf-8")
    with pytest.raises(DataError, match="header must contain text,label"):
        read_split(path)


def test_load_maps_datasets_to_tasks_and_reports_unknown_labels(seed_slice: Path, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    for ds in ("financial_phrasebank", "fin_tweets_topic", "cs_sentiment", "banking77"):
        (seed / ds).symlink_to(seed_slice / ds)
    write_csv(
        seed / "fin_tweets_sentiment" / "train.csv",
        [("$AAPL to the moon", "bullish"), ("$TSLA crashing", "bearish"), ("$X flat", "neutral"), ("hm", "meh")],
    )
    write_csv(seed / "fin_tweets_sentiment" / "dev.csv", [("$MSFT up", "bullish")])
    data = load_training_data(seed)
    assert set(data.specs) == {"news_sentiment", "news_topic", "cs_sentiment", "cs_topic"}
    assert data.specs["news_sentiment"].labels == ("negative", "neutral", "positive")
    assert len(data.specs["news_topic"].labels) == 20
    assert len(data.specs["cs_topic"].labels) == 77
    tweets = [ex for ex in data.train["news_sentiment"] if ex.source == "fin_tweets_sentiment"]
    labels = data.specs["news_sentiment"].labels
    assert sorted(labels[ex.label] for ex in tweets) == ["negative", "neutral", "positive"]
    assert data.stats["fin_tweets_sentiment/train"]["unknown_labels"] == {"meh": 1}
    assert [ex.text for ex in data.dev["fin_tweets_sentiment"]] == ["$MSFT up"]


def test_analyst_labels_join_the_training_rows(seed_slice: Path, db: Database) -> None:
    before = load_training_data(seed_slice, session=None)
    with db.session() as session, session.begin():
        session.add_all(
            [
                LabelRow(
                    doc_id="d1",
                    task="cs_sentiment",
                    label="negative",
                    text="My card was charged twice!",
                    labeled_by="ann",
                ),
                LabelRow(doc_id="d2", task="cs_sentiment", label="furious", text="unknown label", labeled_by="ann"),
                LabelRow(doc_id="d3", task="news_topic", label="", text="blank label", labeled_by="bob"),
            ]
        )
    with db.session() as session:
        after = load_training_data(seed_slice, session=session)
    added = [ex for ex in after.train["cs_sentiment"] if ex.source == "analyst"]
    assert [ex.text for ex in added] == ["My card was charged twice!"]
    assert after.stats["analyst/cs_sentiment"]["unknown_labels"] == {"furious": 1}
    assert after.stats["analyst/news_topic"]["empty"] == 1
    assert after.fingerprint != before.fingerprint


def test_fingerprint_is_stable_and_sensitive(seed_slice: Path, tmp_path: Path) -> None:
    a = load_training_data(seed_slice).fingerprint
    assert load_training_data(seed_slice).fingerprint == a
    seed = tmp_path / "seed"
    seed.mkdir()
    for ds in ("financial_phrasebank", "fin_tweets_sentiment", "fin_tweets_topic", "banking77"):
        (seed / ds).symlink_to(seed_slice / ds)
    (seed / "cs_sentiment").mkdir()
    (seed / "cs_sentiment" / "dev.csv").symlink_to(seed_slice / "cs_sentiment" / "dev.csv")
    text = (seed_slice / "cs_sentiment" / "train.csv").read_text(encoding="utf-8")
    (seed / "cs_sentiment" / "train.csv").write_text(text.replace("negative", "neutral", 1), encoding="utf-8")
    assert load_training_data(seed).fingerprint != a


def _spec(task: str, labels: tuple[str, ...]) -> TaskSpec:
    return TaskSpec(task, "customer_service", "topic", labels)


def test_label_set_change_is_refused_unless_allowed() -> None:
    old = {"cs_topic": _spec("cs_topic", ("card_lost", "refund"))}
    new = {"cs_topic": _spec("cs_topic", ("card_lost", "crypto", "refund"))}
    assert check_label_sets(old, old, allow_new_label_set=False) == []
    with pytest.raises(DataError, match=r"cs_topic: label set differs.*added \['crypto'\]"):
        check_label_sets(new, old, allow_new_label_set=False)
    assert check_label_sets(new, old, allow_new_label_set=True)


def test_labels_keep_the_dataset_spelling_and_maps_ignore_case(tmp_path: Path) -> None:
    """The contract names banking77's intents unchanged (e.g. Refund_not_showing_up), so labels are not folded."""
    from finetune.data import read_split

    path = tmp_path / "split.csv"
    rows = "text,label\r\nwhere is my refund,Refund_not_showing_up\r\nstocks slump,Bearish\r\n"
    path.write_text(rows, encoding="utf-8")
    pairs, _ = read_split(path, {"bearish": "negative"})
    assert pairs == [("where is my refund", "Refund_not_showing_up"), ("stocks slump", "negative")]


def test_rows_annotators_disputed_are_marked_ambiguous(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    rows = [("Profit rose 5 %.", "positive"), ("The plant will be sold.", "neutral"), ("Sales fell.", "negative")]
    write_csv(seed / "financial_phrasebank" / "train.csv", rows)
    write_csv(seed / "financial_phrasebank" / "dev.csv", rows[:1])
    write_csv(seed / "financial_phrasebank" / "allagree" / "train.csv", [rows[0], rows[2]])
    data = load_training_data(seed, datasets=["financial_phrasebank"])
    assert {ex.text: ex.ambiguous for ex in data.train["news_sentiment"]} == {
        "Profit rose 5 %.": False,
        "The plant will be sold.": True,
        "Sales fell.": False,
    }
    assert data.stats["financial_phrasebank/train"]["ambiguous"] == 1
    # without the subset's file nothing is marked, and nothing fails
    (seed / "financial_phrasebank" / "allagree" / "train.csv").unlink()
    data = load_training_data(seed, datasets=["financial_phrasebank"])
    assert not any(ex.ambiguous for ex in data.train["news_sentiment"])


def test_the_seed_datas_disputed_phrasebank_rows_are_those_outside_allagree() -> None:
    # the data README: 3,870 train sentences (50Agree), 1,807 of them in AllAgree
    data = load_training_data(seed_root(), datasets=["financial_phrasebank"])
    rows = data.train["news_sentiment"]
    assert (len(rows), sum(ex.ambiguous for ex in rows)) == (3870, 3870 - 1807)

"""The watched directory: each file once across restarts, bad lines to the dead-letter topic."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ingest.files import DirectoryWatcher
from ingest.pipeline import Ingestor
from ingest.publisher import ListSink
from ingest.settings import IngestSettings
from riskstream.db import Database
from schemas.records import RawDocument


def write_old(path: Path, content: str) -> None:
    path.write_text(content, encoding="utf-8")
    past = time.time() - 60
    os.utime(path, (past, past))


def test_each_file_once_across_restarts_and_bad_lines_to_dlq(
    tmp_path: Path, ingest_settings: IngestSettings, db: Database
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_old(
        inbox / "export.jsonl",
        "\n".join(
            [
                json.dumps(
                    {"id": "A1", "text": "Card 4539148803436467 stolen, email bob@example.com", "source": "crm"}
                ),
                '{"id": "A9", "text": "broken json, card 4539 1488 0343 6467',
                json.dumps({"id": "A2", "text": ""}),
                json.dumps({"text": "no id here, still fine"}),
                json.dumps(["not", "an", "object"]),
            ]
        ),
    )
    write_old(inbox / "calls.csv", "id,text,agent\nC1,Call me on +44 20 7946 0958 please,Ann\nC2,,Bob\n")
    (inbox / "notes.txt").write_text("ignored", encoding="utf-8")
    (inbox / "fresh.jsonl").write_text(json.dumps({"text": "still being written"}), encoding="utf-8")

    sink = ListSink()
    watcher = DirectoryWatcher(inbox, Ingestor(ingest_settings, sink, db=db), db, source="files", settle_s=5)
    stats = watcher.scan()
    assert stats.files == 2 and stats.documents == 3 and stats.bad_lines == 4
    texts = {d.id: d.text for d in sink.docs}
    assert texts["crm:A1"] == "Card [CARD] stolen, email [EMAIL]"
    assert texts["files:C1"] == "Call me on [PHONE] please"
    assert next(d for d in sink.docs if d.id == "files:C1").metadata["agent"] == "Ann"
    assert {dl.reason for dl in sink.dead} == {"invalid_json", "schema_violation", "not_an_object"}
    assert not any(dl.payload_truncated for dl in sink.dead)
    assert all(dl.stage == "ingest" and dl.key for dl in sink.dead)
    assert any("text" in dl.error for dl in sink.dead if dl.reason == "schema_violation")  # names the field

    # a restart: a new watcher and pipeline on the same store does not publish the files again
    assert not any("4539" in (dl.payload or "") for dl in sink.dead)  # the DLQ gets no card number either

    sink2 = ListSink()
    restarted = DirectoryWatcher(inbox, Ingestor(ingest_settings, sink2, db=db), db, source="files", settle_s=5)
    again = restarted.scan()
    assert again.files == 0 and again.skipped_known == 2 and sink2.docs == []

    # the same path with new content is a new export
    write_old(inbox / "calls.csv", "id,text\nC3,Where is my refund?\n")
    third = restarted.scan()
    assert third.files == 1 and [d.id for d in sink2.docs] == ["files:C3"]


def test_a_file_whose_publish_failed_is_read_again(
    tmp_path: Path, ingest_settings: IngestSettings, db: Database
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_old(inbox / "x.jsonl", json.dumps({"id": "1", "text": "hello there"}) + "\n")
    sink = ListSink()
    sink.fail_next = 1
    watcher = DirectoryWatcher(inbox, Ingestor(ingest_settings, sink, db=db), db, settle_s=0)
    try:
        watcher.scan()
    except Exception as exc:  # the PublishError surfaces; the file is not marked processed
        assert "not acknowledged" in str(exc)
    assert watcher.scan().files == 1
    assert [d.id for d in sink.docs] == ["files:1"]


def test_a_row_too_large_for_the_topic_is_a_dead_letter_and_the_file_is_not_read_again(
    tmp_path: Path, ingest_settings: IngestSettings, db: Database
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rows = [
        {"id": "small-1", "text": "where is my refund"},
        # its document (metadata included) is larger than the topic takes: sending it again could never succeed
        {"id": "huge", "text": "my card 4539 1488 0343 6467 was charged twice", "notes": "n" * 20_000},
        {"id": "small-2", "text": "thank you for the quick answer"},
    ]
    write_old(inbox / "x.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    sink = ListSink()
    sink.max_record_bytes = 10_000
    ingestor = Ingestor(ingest_settings, sink, db=db)
    watcher = DirectoryWatcher(inbox, ingestor, db, settle_s=0)
    stats = watcher.scan()
    assert [d.id for d in sink.docs] == ["files:small-1", "files:small-2"]
    assert stats.files == 1 and stats.documents == 2 and stats.bad_lines == 1 and stats.publish_failures == 0
    (letter,) = sink.dead
    assert (letter.reason, letter.key, letter.stage) == ("too_large", "files:huge", "ingest")
    assert "10000" in letter.error and "max.message.bytes" in letter.error
    assert letter.payload is not None and "[CARD]" in letter.payload and "4539" not in letter.payload  # redacted
    assert ingestor.totals["too_large"] == 1
    # recorded: the next scan does not read the file (nor dead-letter the row) again
    again = watcher.scan()
    assert again.files == 0 and again.skipped_known == 1 and len(sink.dead) == 1
    # and the refused document is not remembered as seen: with the limit raised, the same row goes through
    sink.max_record_bytes = None
    result = ingestor.ingest([RawDocument.model_validate_json(letter.payload)])  # the letter carries the document
    assert result.ids == ["files:huge"] and sink.docs[-1].metadata["notes"] == "n" * 20_000


def test_a_long_bad_line_is_dead_lettered_with_its_start_and_says_so(
    tmp_path: Path, ingest_settings: IngestSettings, db: Database
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    line = '{"id": "L1", "text": "' + "a" * 30_000  # unterminated: invalid JSON, 30 KB long
    write_old(inbox / "x.jsonl", line + "\n")
    sink = ListSink()
    DirectoryWatcher(inbox, Ingestor(ingest_settings, sink, db=db), db, settle_s=0).scan()
    (letter,) = sink.dead
    assert letter.reason == "invalid_json" and letter.key == "x.jsonl:1"
    assert letter.payload_truncated and letter.payload_size == len(line)
    assert letter.payload is not None and line.startswith(letter.payload) and len(letter.payload) == 10_000

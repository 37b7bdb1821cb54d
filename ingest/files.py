"""Watched directory of customer-service exports (``.jsonl`` and ``.csv``), each file processed once.

A file is identified by its path and the SHA-256 of its content (``processed_files``); it is recorded only after
every document of it was acknowledged by Kafka and every bad line went to the dead-letter topic, so a crash
mid-file means the file is read again (ids are stable: a row's own id, else the file digest and line). A file
modified in the last ``files_settle_s`` seconds is left for the next scan (it may still be being written).
Bad lines (invalid JSON, missing or empty text, wrong types) are counted and sent to the DLQ as
``DeadLetter(stage="ingest")``, their payload PII-redacted like the documents (the DLQ is Kafka too). So is a row
whose document is larger than the raw topic takes (``too_large``, sent by the pipeline): it counts as a bad line,
and the file is recorded, not read again on every scan.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import select

from ingest.normalize import message_id, parse_datetime
from ingest.pipeline import Ingestor
from ingest.publisher import PublishError
from riskstream.db import Database
from schemas.db import ProcessedFileRow
from schemas.records import DeadLetter, RawDocument

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".csv")
ID_FIELDS = ("id", "message_id", "msg_id", "ticket_id")
BATCH = 500
BAD_LINE_PAYLOAD_CHARS = 10_000  # a bad line's dead letter carries its start (the file keeps the whole line)


@dataclass
class FileStats:
    files: int = 0
    skipped_known: int = 0
    documents: int = 0
    duplicates: int = 0
    bad_lines: int = 0
    publish_failures: int = 0
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)


def _row_to_doc(row: dict[str, Any], default_source: str, position: str) -> RawDocument:
    """A row as a document. Without an id of its own a row is named by its file's content digest and its line,
    which is as unique as a UUID but stable if the file is read again after a crash."""
    source = str(row.get("source") or default_source)
    given = next((row[f] for f in ID_FIELDS if row.get(f) not in (None, "")), None) or position
    known = {"text", "title", "channel", "source", "published_at", "metadata", *ID_FIELDS}
    metadata = dict(row.get("metadata") or {}) if isinstance(row.get("metadata"), dict) else {}
    metadata.update({k: v for k, v in row.items() if k not in known and v not in (None, "")})
    text = row.get("text")
    if not isinstance(text, str):
        raise ValueError("text: required string field is missing" if text is None else "text: must be a string")
    return RawDocument(
        id=message_id(source, given),
        channel=row.get("channel") or "customer_service",
        source=source,
        text=text,
        title=row.get("title") or None,
        published_at=parse_datetime(row.get("published_at")),
        metadata=metadata,
    )


def _records(path: Path, data: bytes) -> Iterator[tuple[int, str, dict[str, Any] | None, str | None]]:
    """(line number, raw line, parsed row or None, error) for every record of a file."""
    text = data.decode("utf-8-sig", errors="replace")
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield lineno, line, None, f"invalid_json: {exc}"
                continue
            if not isinstance(value, dict):
                yield lineno, line, None, "not_an_object: each line must be a JSON object"
                continue
            yield lineno, line, value, None
    else:
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            lineno = reader.line_num
            raw = ",".join(str(v) for v in row.values())
            if None in row:  # more cells than header columns
                yield lineno, raw, None, "malformed_csv: more cells than header columns"
                continue
            yield lineno, raw, dict(row), None


class DirectoryWatcher:
    def __init__(
        self, directory: Path, ingestor: Ingestor, db: Database, *, source: str = "files", settle_s: float = 1.0
    ) -> None:
        self.directory = directory
        self.ingestor = ingestor
        self.db = db
        self.source = source
        self.settle_s = settle_s

    def _known(self, path: Path, digest: str) -> bool:
        with self.db.session() as session:
            row = session.execute(select(ProcessedFileRow).where(ProcessedFileRow.path == str(path))).scalar()
            return row is not None and row.sha256 == digest

    def _record(self, path: Path, digest: str, size: int, documents: int, errors: int) -> None:
        with self.db.session() as session, session.begin():
            session.merge(
                ProcessedFileRow(
                    path=str(path),
                    sha256=digest,
                    size=size,
                    documents=documents,
                    errors=errors,
                    processed_at=datetime.now(tz=UTC),
                )
            )

    def candidates(self) -> list[Path]:
        now = time.time()
        out = []
        for path in sorted(self.directory.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in SUFFIXES:
                continue
            if now - path.stat().st_mtime < self.settle_s:
                continue
            out.append(path.resolve())
        return out

    def process_file(self, path: Path, stats: FileStats) -> None:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if self._known(path, digest):
            stats.skipped_known += 1
            return
        docs: list[RawDocument] = []
        dead: list[DeadLetter] = []
        published = duplicates = too_large = 0
        for lineno, raw, row, parse_error in _records(path, data):
            error = parse_error
            if row is not None:
                try:
                    docs.append(_row_to_doc(row, self.source, f"{digest[:16]}-{lineno}"))
                except ValidationError as exc:
                    fields = "; ".join(
                        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                        for e in exc.errors(include_input=False, include_url=False)
                    )
                    error = f"schema_violation: {fields}"
                except ValueError as exc:
                    error = f"schema_violation: {exc}"
            if error is not None:
                reason = error.split(":", 1)[0]
                dead.append(
                    DeadLetter(
                        reason=reason,
                        error=error,
                        stage="ingest",
                        key=f"{path.name}:{lineno}",
                        payload=self.ingestor.redactor.redact(raw[:BAD_LINE_PAYLOAD_CHARS])[0],
                        # the whole line stays in the file (named by key)
                        payload_truncated=len(raw) > BAD_LINE_PAYLOAD_CHARS,
                        payload_size=len(raw) if len(raw) > BAD_LINE_PAYLOAD_CHARS else None,
                    )
                )
            if len(docs) >= BATCH:
                result = self.ingestor.ingest(docs)
                published += len(result.published)
                duplicates += len(result.duplicates)
                too_large += len(result.rejected)  # dead-lettered by the pipeline (larger than the topic takes)
                docs = []
        if docs:
            result = self.ingestor.ingest(docs)
            published += len(result.published)
            duplicates += len(result.duplicates)
            too_large += len(result.rejected)
        if dead:
            self.ingestor.sink.dead_letter(dead)
            log.warning("%s: %d bad line(s) sent to the dead-letter topic", path.name, len(dead))
        bad = len(dead) + too_large
        self._record(path, digest, len(data), published, bad)
        stats.files += 1
        stats.documents += published
        stats.duplicates += duplicates
        stats.bad_lines += bad
        stats.per_file[path.name] = {"documents": published, "duplicates": duplicates, "bad_lines": bad}
        log.info("%s: %d published, %d duplicates, %d bad lines", path.name, published, duplicates, bad)

    def scan(self, *, keep_going: bool = False) -> FileStats:
        """Process every new file. With ``keep_going`` a file whose documents were not acknowledged is logged
        and left unrecorded (the next scan reads it again) instead of raising."""
        stats = FileStats()
        for path in self.candidates():
            try:
                self.process_file(path, stats)
            except PublishError as exc:
                if not keep_going:
                    raise
                stats.publish_failures += 1
                log.error("%s: %s; the file will be read again", path.name, exc)
        return stats

    def run(self, *, poll_s: float, once: bool, stop: Callable[[], bool] = lambda: False) -> FileStats:
        total = self.scan(keep_going=not once)
        while not once and not stop():
            time.sleep(poll_s)
            stats = self.scan(keep_going=True)
            total.publish_failures += stats.publish_failures
            total.files += stats.files
            total.documents += stats.documents
            total.bad_lines += stats.bad_lines
            total.duplicates += stats.duplicates
            total.per_file.update(stats.per_file)
        return total

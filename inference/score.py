"""Offline scoring of a CSV or JSONL file with the serving engine (``riskstream score``)."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inference.engine import Engine
from inference.settings import EngineSettings
from schemas.records import CHANNELS

log = logging.getLogger(__name__)

CHUNK = 8192  # rows read, scored and written at a time: memory stays flat on large files


# How `riskstream score` packs documents unless told otherwise (flag or environment variable): a file is one long
# backlog, read CHUNK rows at a time, so latency does not matter and every forward pass can fill the token budget.
# Sorting the whole chunk by length, packing by the budget alone (no cap on documents, no length spread) and padding
# the rows to 8 sizes per power of two leave almost every pass with the same matrix shape; oneDNN then builds its
# kernels once instead of once per pack. On 2,000 tweets (2-core Xeon, bf16) the single pass took 2.0-2.1 s
# instead of 2.7 (docs/inference.md).
OFFLINE_PACKING: dict[str, Any] = {"sort_window": CHUNK, "pack_spread": 0.0, "row_buckets": 8}


def offline_settings(settings: EngineSettings) -> EngineSettings:
    """``settings`` with :data:`OFFLINE_PACKING` for every packing field that no flag or environment variable set;
    ``max_batch_docs`` becomes the token budget (every document has at least one token, so the budget alone bounds
    a pack)."""
    profile = {**OFFLINE_PACKING, "max_batch_docs": settings.token_budget}
    update = {name: value for name, value in profile.items() if name not in settings.model_fields_set}
    return settings.model_copy(update=update)


class InputError(ValueError):
    """The input file cannot be scored (format, missing text, unknown channel); the message says where."""


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "text" not in reader.fieldnames:
                raise InputError(f"{path}: a CSV needs a 'text' column (found {reader.fieldnames})")
            yield from reader
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InputError(f"{path}:{lineno}: not JSON: {exc}") from exc
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{lineno}: each line must be a JSON object")
                yield row
    else:
        raise InputError(f"{path}: unsupported input format {suffix!r} (use .csv or .jsonl)")


def score_file(
    engine: Engine,
    input_path: Path,
    output_path: Path,
    *,
    channel: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every row of ``input_path`` into ``output_path`` (JSONL, one object per input row, same order).

    Rows need ``text``; the channel comes from a ``channel`` column, else from ``channel``. Rows keep their ``id``
    (else their 1-based row number). Raises :class:`InputError` before writing anything for a bad first chunk;
    the output is written to a temporary sibling and renamed, so a failed run leaves no half file.
    """
    from tqdm import tqdm

    if channel is not None and channel not in CHANNELS:
        raise InputError(f"unknown channel {channel!r} (expected one of {', '.join(CHANNELS)})")
    tmp = output_path.with_name(output_path.name + ".partial")
    n = tokens = passes = 0
    bar = tqdm(desc=f"scoring {input_path.name}", unit="doc", disable=not progress)
    try:
        with tmp.open("w", encoding="utf-8") as out:
            chunk: list[dict[str, Any]] = []
            rows = read_rows(input_path)
            for row in rows:
                chunk.append(row)
                if len(chunk) >= CHUNK:
                    tokens += _score_chunk(engine, chunk, n, channel=channel, out=out, bar=bar)
                    n, passes, chunk = n + len(chunk), passes + engine.last_stats.packs, []
            if chunk:
                tokens += _score_chunk(engine, chunk, n, channel=channel, out=out, bar=bar)
                n, passes = n + len(chunk), passes + engine.last_stats.packs
        tmp.replace(output_path)
    finally:
        bar.close()
        if tmp.exists():
            tmp.unlink()
    packing = {  # as the engine packed this file (the offline profile, or what flags and variables set)
        "token_budget": engine.token_budget,
        "sort_window": engine.sort_window,
        "max_batch_docs": engine.max_batch_docs,
        "pack_spread": engine.pack_spread,
        "row_buckets": engine.row_buckets,
    }
    return {
        "documents": n,
        "tokens": tokens,
        "forward_passes": passes,
        "packing": packing,
        "model_version": engine.version,
        "output": str(output_path),
    }


def _score_chunk(
    engine: Engine, rows: list[dict[str, Any]], offset: int, *, channel: str | None, out: Any, bar: Any
) -> int:
    texts: list[str] = []
    channels: list[str] = []
    for i, row in enumerate(rows, offset + 1):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"row {i}: text is missing or empty")
        ch = row.get("channel") or channel
        if ch is None:
            raise InputError(f"row {i}: no channel column and no --channel given")
        if ch not in CHANNELS:
            raise InputError(f"row {i}: unknown channel {ch!r} (expected one of {', '.join(CHANNELS)})")
        texts.append(text)
        channels.append(ch)
    scores = engine.score(texts, channels, progress=bar.update)
    tokens = 0
    for i, (row, ch, score) in enumerate(zip(rows, channels, scores, strict=True), offset + 1):
        tokens += score.tokens
        record = {
            "id": row.get("id") or str(i),
            "channel": ch,
            "sentiment": score.sentiment.model_dump(exclude_none=True),
            "topic": score.topic.model_dump(exclude_none=True),
            "risk_score": score.risk_score,
            "uncertainty": score.uncertainty,
            "model_version": score.model_version,
        }
        if "label" in row:
            record["label"] = row["label"]
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return tokens

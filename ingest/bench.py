"""``riskstream bench ingest``: documents/s published by replay, side by side in one run.

Variants on the same documents (a seed dataset's rows joined into ~1 KB documents):
- ``pipeline_only``: redaction, language, entities and JSON encoding with no broker (the CPU ceiling);
- ``kafka_lz4`` / ``kafka_gzip`` / ``kafka_none``: the real replay path into the real broker with each compression,
  every record acknowledged (acks=all, idempotent);
- ``kafka_lz4_2_workers``: as ``kafka_lz4`` with redaction and enrichment in two worker processes;
- ``kafka_lz4_dedupe_one_pass``: as ``kafka_lz4`` with exact and MinHash near-duplicate detection on, over one
  pass of the split (documents/s counts every document processed, duplicates included).
Target: >= 3,000 documents/s of about 1 KB. Documents go to a separate bench topic, not the raw topic.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence

import click

from ingest.pipeline import Ingestor
from ingest.publisher import KafkaPublisher, TooLarge, encode
from ingest.replay import replay, replay_documents
from ingest.settings import IngestSettings
from riskstream.cliutil import echo_json, with_settings
from riskstream.kafka_client import security_options
from schemas.records import DeadLetter, RawDocument
from schemas.topics import ensure_topics

log = logging.getLogger(__name__)

TARGET_DOCS_PER_S = 3000


class _EncodeOnlySink:
    """Serialises like the Kafka publisher but sends nothing (isolates the pipeline's own cost)."""

    def __init__(self) -> None:
        self.bytes = 0

    def publish(self, docs: Sequence[RawDocument]) -> list[TooLarge]:
        for doc in docs:
            self.bytes += len(encode(doc))
        return []

    def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        return None

    def close(self) -> None:
        return None


@click.command("ingest")
@click.option("--dataset", default="financial_phrasebank", show_default=True, help="Seed dataset to replay.")
@click.option("--split", default="train", show_default=True)
@click.option("--limit", type=int, default=6_000, show_default=True, help="Documents per variant.")
@click.option("--min-chars", type=int, default=1000, show_default=True, help="Join rows into documents this big.")
@click.option("--topic", default=None, help="Bench topic (default: a fresh riskstream.bench.ingest.<random>).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@with_settings(IngestSettings)
def bench_ingest(  # noqa: PLR0917 - click passes every option positionally by name
    dataset: str, split: str, limit: int, min_chars: int, topic: str | None, as_json: bool, *, settings: IngestSettings
) -> None:
    """Documents/s published by replay (pipeline only vs. the real broker with each compression)."""
    seed = settings.require_seed_data()
    topic = topic or f"riskstream.bench.ingest.{uuid.uuid4().hex[:8]}"
    # three partitions whatever the settings say: runs stay comparable
    ensure_topics(
        settings.kafka_bootstrap,
        [topic],
        partitions=3,
        replication=settings.kafka_topic_replication,
        security=security_options(settings),
    )
    results: list[dict[str, object]] = []

    def run(
        name: str, sink_settings: IngestSettings | None, *, dedupe: bool = False, workers: int = 1, loop: bool = True
    ) -> None:
        sink = KafkaPublisher(sink_settings) if sink_settings is not None else _EncodeOnlySink()
        ingestor = Ingestor(settings.model_copy(update={"prepare_workers": workers}), sink, db=None, dedupe=dedupe)
        if workers > 1:  # start the worker processes before the clock runs
            ingestor.prepare_many(list(replay_documents(seed, dataset, split, min_chars=min_chars))[:256])
        cpu0 = time.process_time()
        try:
            stats = replay(
                ingestor, seed, dataset, split=split, limit=limit, loop=loop, min_chars=min_chars, progress=not as_json
            )
        finally:
            t0 = time.perf_counter()
            ingestor.close()
            sink.close()
            close_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0  # this process, all its threads (not the worker processes)
        seconds = stats.seconds + close_s
        results.append(
            {
                "variant": name,
                "prepare_workers": workers,
                "documents": stats.documents,
                "published": stats.published,
                "seconds": round(seconds, 3),
                "docs_per_s": round(stats.documents / seconds, 1),
                "avg_doc_bytes": round(stats.bytes / max(1, stats.documents)),
                "mb_per_s": round(stats.bytes / seconds / 1e6, 2),
                "main_process_cpu_us_per_doc": round(cpu_s / max(1, stats.documents) * 1e6),
            }
        )

    def kafka(compression: str) -> IngestSettings:
        return settings.model_copy(update={"topic_raw": topic, "compression": compression})

    run("pipeline_only", None)
    run("kafka_lz4", kafka("lz4"))
    run("kafka_gzip", kafka("gzip"))
    run("kafka_none", kafka("none"))
    run("kafka_lz4_2_workers", kafka("lz4"), workers=2)
    # dedupe needs distinct documents: one pass over the split (a loop would only repeat ids)
    run("kafka_lz4_dedupe_one_pass", kafka("lz4"), dedupe=True, loop=False)
    kafka_lz4 = next(r for r in results if r["variant"] == "kafka_lz4")
    report = {
        "benchmark": "ingest",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "dataset": dataset,
        "split": split,
        "topic": topic,
        "target_docs_per_s": TARGET_DOCS_PER_S,
        "meets_target": float(kafka_lz4["docs_per_s"]) >= TARGET_DOCS_PER_S,  # type: ignore[arg-type]
        "variants": results,
    }
    if as_json:
        echo_json(report)
        return
    for r in results:
        click.echo(
            f"{r['variant']:<18} {r['docs_per_s']:>10} docs/s  {r['mb_per_s']:>6} MB/s  "
            f"({r['documents']} docs of ~{r['avg_doc_bytes']} B)"
        )

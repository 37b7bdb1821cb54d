"""``riskstream ingest``: the ingest sources as commands (crawl, serve, files, replay) and ``pii-eval``."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import click

from ingest.settings import DATA_DIR, IngestSettings
from riskstream.cliutil import echo_json, with_settings

log = logging.getLogger(__name__)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT set an event; the long-running loops finish their batch, flush and exit."""
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: finishing the current batch and shutting down", signum)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def runtime(settings: IngestSettings, *, dedupe: bool = True) -> Iterator[Any]:
    """Topics, database, Kafka publisher and pipeline; closed (producer flushed) on the way out."""
    from ingest.pipeline import Ingestor
    from ingest.publisher import KafkaPublisher
    from riskstream.db import Database
    from schemas.topics import ensure_configured

    # the topics exist before the first publish, which then never waits for a broker to create one (and a
    # cluster that refuses automatic creation gets them with the configured partitions and replication)
    ensure_configured(settings, [settings.topic_raw, settings.topic_dlq])
    db = Database(settings.db_url)
    publisher = KafkaPublisher(settings)
    ingestor = Ingestor(settings, publisher, db=db, dedupe=dedupe)
    try:
        yield db, ingestor
    finally:
        ingestor.close()
        publisher.close()  # flush: everything handed to the producer is delivered or reported before exit
        db.dispose()


@click.group("ingest")
def ingest() -> None:
    """Bring documents in: crawl news feeds, accept pushed or dropped customer-service text, replay datasets."""


@ingest.command("crawl")
@click.option("--feed", "feeds", multiple=True, required=True, help="RSS or Atom feed URL (repeatable).")
@click.option("--once", is_flag=True, help="One pass over the feeds, then exit (for cron).")
@with_settings(IngestSettings)
def crawl_cmd(feeds: tuple[str, ...], once: bool, settings: IngestSettings) -> None:
    """Crawl feeds politely and publish their articles (conditional GET, robots.txt, rate limits)."""
    from ingest.crawler.crawl import Crawler
    from ingest.crawler.fetch import Fetcher
    from ingest.crawler.state import CrawlState

    for feed in feeds:  # before connecting to anything
        parts = urlsplit(feed)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.BadParameter(f"{feed!r} is not an http(s) URL", param_hint="--feed")
    allowed = set(settings.allowed_hosts) or {(urlsplit(f).hostname or "").lower() for f in feeds}
    with runtime(settings) as (db, ingestor), _stop_on_signals() as stop:
        fetcher = Fetcher(settings, allowed_hosts=allowed, state=CrawlState(db))
        try:
            crawler = Crawler(
                fetcher, ingestor, fetch_articles=settings.fetch_articles, min_article_chars=settings.min_article_chars
            )
            stats = crawler.run(list(feeds), interval_s=settings.crawl_interval_s, once=once, stop=stop.is_set)
        finally:
            fetcher.close()
    echo_json(stats.as_dict())
    if stats.publish_failures:
        raise SystemExit(1)  # cron sees the failure; nothing was marked done


@ingest.command("serve")
@click.option("--port", type=int, default=None, help="Port to listen on (default: --push-port).")
@with_settings(IngestSettings)
def serve_cmd(port: int | None, settings: IngestSettings) -> None:
    """Run the HTTP push endpoint (POST /v1/messages, GET /healthz)."""
    import uvicorn

    from ingest.push import create_app

    if settings.push_token is None:
        raise click.UsageError("set RISKSTREAM_PUSH_TOKEN (or --push-token): the endpoint never runs unauthenticated")
    with runtime(settings) as (_db, ingestor):
        app = create_app(
            ingestor,
            token=settings.push_token.get_secret_value(),
            max_body_bytes=settings.max_body_bytes,
            max_messages=settings.max_batch_messages,
        )
        uvicorn.run(
            app,
            host=settings.push_host,
            port=port if port is not None else settings.push_port,
            log_level=settings.log_level.lower(),
        )


@ingest.command("files")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--once", is_flag=True, help="Process what is there now, then exit.")
@with_settings(IngestSettings)
def files_cmd(directory: Path, once: bool, settings: IngestSettings) -> None:
    """Watch DIRECTORY for .jsonl/.csv exports; each file is published once (across restarts)."""
    from ingest.files import DirectoryWatcher

    with runtime(settings) as (db, ingestor), _stop_on_signals() as stop:
        watcher = DirectoryWatcher(
            directory, ingestor, db, source=settings.files_source, settle_s=settings.files_settle_s
        )
        stats = watcher.run(poll_s=settings.files_poll_s, once=once, stop=stop.is_set)
    echo_json(stats.__dict__)


@ingest.command("replay")
@click.option("--dataset", required=True, help="Seed dataset name (a folder of the seed data).")
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="train", show_default=True)
@click.option(
    "--rate",
    type=float,
    default=None,
    help="Documents per second (token bucket); default: as fast as the broker acknowledges.",
)
@click.option("--limit", type=int, default=None, help="Stop after this many documents.")
@click.option("--loop", is_flag=True, help="Start over at the end of the split (ids repeat: downstream overwrites).")
@with_settings(IngestSettings)
def replay_cmd(
    dataset: str, split: str, rate: float | None, limit: int | None, loop: bool, *, settings: IngestSettings
) -> None:
    """Stream a seed dataset's rows as raw documents (ids: {dataset}-{split}-{row})."""
    from ingest.replay import dataset_path, replay

    seed = settings.require_seed_data()
    try:
        dataset_path(seed, dataset, split)  # before connecting to anything
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="--dataset") from exc
    with runtime(settings, dedupe=settings.replay_dedupe) as (_db, ingestor), _stop_on_signals() as stop:
        stats = replay(ingestor, seed, dataset, split=split, rate=rate, limit=limit, loop=loop, stop=stop.is_set)
    echo_json({**stats.__dict__, "docs_per_s": round(stats.docs_per_s, 1)})


@ingest.command("pii-eval")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DATA_DIR / "pii_eval.jsonl",
    show_default=True,
    help="Labeled JSONL set (text, spans).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def pii_eval_cmd(path: Path, as_json: bool) -> None:
    """Precision and recall of the PII redactor per type on a labeled set."""
    from ingest.pii import Redactor, evaluate

    examples = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    report = evaluate(Redactor(), examples)
    report["file"] = str(path)
    if as_json:
        echo_json(report)
        return
    click.echo(
        f"{report['examples']} examples from {path}; gold values left in the text: {report['leaked_gold_values']}"
    )
    click.echo(f"{'type':<8} {'gold':>5} {'pred':>5} {'precision':>9} {'recall':>7}")
    per_type: dict[str, dict[str, Any]] = report["per_type"]  # type: ignore[assignment]
    for name, row in per_type.items():
        click.echo(f"{name:<8} {row['gold']:>5} {row['predicted']:>5} {row['precision']:>9.3f} {row['recall']:>7.3f}")


__all__ = ["ingest"]

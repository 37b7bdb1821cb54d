"""The news crawler: feeds -> entries -> article pages -> raw documents -> the ingest pipeline.

A feed's conditional-GET validators are stored only after its new entries were published and acknowledged, so a
crash between fetch and publish makes the next run fetch the feed again instead of receiving a 304 and losing the
entries.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from ingest.crawler.extract import UndecodablePageError, extract_article
from ingest.crawler.feeds import FeedEntry, parse_feed
from ingest.crawler.fetch import Fetcher, FetchError
from ingest.normalize import canonical_url, news_id
from ingest.pipeline import Ingestor
from ingest.publisher import PublishError
from schemas.records import RawDocument

log = logging.getLogger(__name__)

TAG_RE = re.compile(r"<[^>]+>")
POLICY_REFUSALS = frozenset({"disallowed_by_robots", "host_not_allowed", "scheme_not_allowed"})


@dataclass
class CrawlStats:
    feeds: int = 0
    not_modified: int = 0
    feed_errors: int = 0  # malformed feeds (entries that parsed were still used)
    feed_failures: int = 0  # feeds that could not be fetched at all
    entries: int = 0
    already_seen: int = 0
    published: int = 0
    duplicates: int = 0
    copies: int = 0
    too_large: int = 0  # articles larger than the raw topic takes (dead-lettered)
    summary_fallbacks: int = 0
    publish_failures: int = 0  # feeds whose documents the broker did not acknowledge (retried next pass)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {k: v for k, v in self.__dict__.items() if k != "skipped"}
        out["skipped"] = dict(self.skipped)
        return out


def _strip_html(value: str | None) -> str:
    if not value:
        return ""
    return " ".join(html.unescape(TAG_RE.sub(" ", value)).split())


class Crawler:
    def __init__(
        self, fetcher: Fetcher, ingestor: Ingestor, *, fetch_articles: bool = True, min_article_chars: int = 40
    ) -> None:
        self.fetcher = fetcher
        self.ingestor = ingestor
        self.fetch_articles = fetch_articles
        self.min_article_chars = min_article_chars

    def _document(self, feed_url: str, entry: FeedEntry, stats: CrawlStats) -> RawDocument | None:
        link = urljoin(feed_url, entry.link)
        text = ""
        title = entry.title
        published = entry.published_at
        language = None
        final_url = link
        text_source = "feed_summary"
        if self.fetch_articles:
            try:
                page = self.fetcher.get(link)
                final_url = page.final_url
                article = extract_article(page.content, content_type=page.headers.get("content-type"), url=link)
                if article is not None and len(article.text) >= self.min_article_chars:
                    text = article.text
                    title = title or article.title
                    published = published or article.published_at
                    language = article.language
                    text_source = "article"
                else:
                    stats.skipped["no_main_text"] += 1
                    log.info("no main text extracted from %s", link)
            except FetchError as exc:
                stats.skipped[exc.reason] += 1
                log.info("article %s not fetched: %s", link, exc)
                if exc.reason in POLICY_REFUSALS:
                    return None  # the site asked not to be crawled there: not even the teaser is kept
            except UndecodablePageError as exc:
                stats.skipped["undecodable"] += 1
                log.warning("article %s skipped: undecodable page (%s)", link, exc)
        if not text:
            text = _strip_html(entry.summary)
            if not text:
                return None
            stats.summary_fallbacks += 1
        return RawDocument(
            id=news_id(link),
            channel="news",
            source=urlsplit(feed_url).netloc,
            text=text,
            title=title,
            url=canonical_url(final_url),
            published_at=published,
            language=language,
            metadata={"feed": feed_url, "text_source": text_source},
        )

    def crawl_feed(self, feed_url: str, stats: CrawlStats) -> None:
        stats.feeds += 1
        try:
            response = self.fetcher.get(feed_url, conditional=True)
        except FetchError as exc:
            stats.feed_failures += 1
            stats.skipped[exc.reason] += 1
            log.warning("feed %s not fetched: %s", feed_url, exc)
            return
        if response.not_modified:
            stats.not_modified += 1
            log.info("feed %s not modified (304)", feed_url)
            return
        parsed = parse_feed(
            response.content, content_type=response.headers.get("content-type"), base_url=response.final_url
        )
        if parsed.error:
            stats.feed_errors += 1
            log.warning(
                "feed %s is malformed (%s); keeping the %d entries that parsed",
                feed_url,
                parsed.error,
                len(parsed.entries),
            )
        docs: list[RawDocument] = []
        for entry in parsed.entries:
            stats.entries += 1
            link = urljoin(feed_url, entry.link)
            if self.ingestor.deduper is not None and self.ingestor.deduper.seen(news_id(link)):
                stats.already_seen += 1
                continue
            doc = self._document(feed_url, entry, stats)
            if doc is not None:
                docs.append(doc)
        result = self.ingestor.ingest(docs)
        stats.published += len(result.published)
        stats.duplicates += len(result.duplicates)
        stats.copies += result.copies
        stats.too_large += len(result.rejected)
        self.fetcher.remember(response)

    def crawl(self, feeds: Sequence[str]) -> CrawlStats:
        stats = CrawlStats()
        for feed in feeds:
            try:
                self.crawl_feed(feed, stats)
            except PublishError as exc:
                # the feed's validators were not stored: the next pass fetches and publishes it again
                stats.publish_failures += 1
                log.error("feed %s: %s", feed, exc)
        log.info("crawl pass: %s", stats.as_dict())
        return stats

    def run(
        self, feeds: Sequence[str], *, interval_s: float, once: bool, stop: Callable[[], bool] = lambda: False
    ) -> CrawlStats:
        stats = self.crawl(feeds)
        while not once and not stop():
            deadline = time.monotonic() + interval_s
            while time.monotonic() < deadline and not stop():
                time.sleep(min(1.0, deadline - time.monotonic()))
            if not stop():
                stats = self.crawl(feeds)
        return stats

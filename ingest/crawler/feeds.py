"""RSS and Atom parsing with feedparser: whatever parses is kept, a malformed feed is a counted error."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import feedparser

from ingest.normalize import struct_time_to_utc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedEntry:
    link: str
    title: str | None
    summary: str | None
    published_at: datetime | None
    entry_id: str | None


@dataclass(frozen=True)
class ParsedFeed:
    entries: list[FeedEntry]
    error: str | None  # feedparser's "bozo" exception, when the feed was malformed
    title: str | None


def _text(value: Any) -> str | None:
    if not value:
        return None
    text = str(value).strip()
    return text or None


def parse_feed(content: bytes, *, content_type: str | None = None, base_url: str | None = None) -> ParsedFeed:
    """Parse a feed document (bytes: feedparser reads the XML declaration and the HTTP charset itself)."""
    headers = {}
    if content_type:
        headers["content-type"] = content_type
    if base_url:
        headers["content-location"] = base_url
    parsed = feedparser.parse(content, response_headers=headers, sanitize_html=True)
    error = None
    if parsed.get("bozo"):
        exc = parsed.get("bozo_exception")
        error = f"{type(exc).__name__}: {exc}" if exc else "malformed feed"
    entries: list[FeedEntry] = []
    for raw in parsed.entries:
        link = _text(raw.get("link"))
        if not link:
            continue
        published = struct_time_to_utc(raw.get("published_parsed") or raw.get("updated_parsed"))
        summary = _text(raw.get("summary"))
        entries.append(FeedEntry(link, _text(raw.get("title")), summary, published, _text(raw.get("id"))))
    feed_title = _text(parsed.feed.get("title")) if parsed.get("feed") else None
    return ParsedFeed(entries, error, feed_title)

"""Main-text extraction of article pages with trafilatura, after a careful decode of the bytes."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime

import trafilatura
from charset_normalizer import from_bytes

from ingest.normalize import parse_datetime

log = logging.getLogger(__name__)

CHARSET_RE = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.IGNORECASE)
HTML_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "")


class UndecodablePageError(ValueError):
    """The page's bytes are not text in any encoding we can trust (binary, wrong type, mojibake)."""


@dataclass(frozen=True)
class Article:
    text: str
    title: str | None
    published_at: datetime | None
    language: str | None


def _charset_from_header(content_type: str | None) -> str | None:
    if not content_type or "charset=" not in content_type.lower():
        return None
    return content_type.lower().split("charset=", 1)[1].split(";")[0].strip().strip("\"'") or None


def decode_html(content: bytes, content_type: str | None) -> str:
    """Bytes -> str: declared charset (HTTP, then <meta>) if it decodes strictly, else UTF-8, else detection."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in HTML_TYPES:
        raise UndecodablePageError(f"content type {media!r} is not a web page")
    if b"\x00" in content[:4096]:
        raise UndecodablePageError("binary content (NUL bytes)")
    candidates: list[str] = []
    header = _charset_from_header(content_type)
    if header:
        candidates.append(header)
    meta = CHARSET_RE.search(content[:4096])
    if meta:
        candidates.append(meta.group(1).decode("ascii", errors="ignore"))
    candidates.append("utf-8")
    for encoding in candidates:
        try:
            return content.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    best = from_bytes(content).best()
    if best is None or best.chaos > 0.3:
        raise UndecodablePageError("no declared or detected encoding decodes the page")
    log.info("page decoded as %s by detection (declared %s)", best.encoding, candidates[:-1] or "nothing")
    return str(best)


def extract_article(content: bytes, *, content_type: str | None, url: str) -> Article | None:
    """The main text and metadata of a page, or None when nothing article-like was found."""
    html = decode_html(content, content_type)
    result = trafilatura.extract(
        html,
        url=url,
        output_format="json",
        with_metadata=True,
        include_comments=False,
        include_tables=False,
        favor_precision=True,
    )
    if not result:
        return None
    data = json.loads(result)
    text = (data.get("text") or "").strip()
    if not text:
        return None
    return Article(
        text=text,
        title=(data.get("title") or None),
        published_at=parse_datetime(data.get("date")),
        language=data.get("language") or None,
    )

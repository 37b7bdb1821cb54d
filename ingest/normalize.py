"""Normalisation to the raw-document contract: ids, UTC times, language and entities.

Ids are assigned once, here, at the edge: a crawled article's id is the SHA-256 of its canonical URL; a pushed or
file message keeps the source's own message id (namespaced by source) or gets a UUID4. Never a hash of the text,
which would merge two customers who wrote the same words.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from schemas.records import Entity

TRACKING_PARAMS = frozenset(
    {"fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "igshid", "yclid", "_hsenc", "_hsmi", "ref_src"}
)


def canonical_url(url: str) -> str:
    """Lower-case scheme and host, no default port, no fragment, no tracking parameters, sorted query."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_") and k.lower() not in TRACKING_PARAMS
    ]
    query.sort()
    path = parts.path or "/"
    return urlunsplit((scheme, host, path, urlencode(query), ""))


def news_id(url: str) -> str:
    """The id of a crawled article: sha256 hex of its canonical URL."""
    return hashlib.sha256(canonical_url(url).encode("utf-8")).hexdigest()


def message_id(source: str, source_message_id: Any | None) -> str:
    """A pushed or file message's id: ``source:their-id`` when the source gave one, else a new UUID4."""
    if source_message_id is not None and str(source_message_id).strip():
        return f"{source}:{str(source_message_id).strip()}"
    return str(uuid.uuid4())


# ---- time -------------------------------------------------------------------------------------------------------


def struct_time_to_utc(value: time.struct_time | None) -> datetime | None:
    """feedparser's ``*_parsed`` fields are UTC struct_times."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
    except (OverflowError, ValueError, TypeError):
        return None


def parse_datetime(value: Any) -> datetime | None:
    """ISO 8601, RFC 2822 or a ``YYYY-MM-DD`` date, to an aware UTC datetime (naive values are taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            try:
                dt = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


# ---- language ---------------------------------------------------------------------------------------------------


class LanguageDetector:
    """py3langid on a bounded prefix of the text (cost grows with length; the first few hundred chars suffice)."""

    def __init__(self, sample_chars: int = 200) -> None:
        from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

        self.sample_chars = sample_chars
        self._identifier = LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=False)
        # the shipped feature table is float16, which numpy multiplies in software: one float32 copy (~57 MB)
        # makes each score about 3x cheaper, the same argmax
        table = getattr(self._identifier, "nb_ptc", None)
        if table is not None and getattr(table, "dtype", None) == np.float16:
            self._identifier.nb_ptc = table.astype(np.float32)
        self._lock = threading.Lock()

    def detect(self, text: str) -> str | None:
        sample = text[: self.sample_chars]
        if len(sample.strip()) < 3:
            return None
        with self._lock:
            lang, _score = self._identifier.classify(sample)
        return str(lang)


# ---- entities ---------------------------------------------------------------------------------------------------

CASHTAG_RE = re.compile(r"(?<![\w$])\$([A-Za-z]{1,6}(?:\.[A-Za-z]{1,2})?)(?![\w])")


def _trie_pattern(words: list[str]) -> str:
    """A regex matching any of ``words``, longest alternatives first at every branch (a prefix trie)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = True

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        ends_here = "" in node
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends_here else body

    return build(trie)


@dataclass(frozen=True)
class Company:
    name: str
    aliases: tuple[str, ...]


def load_companies(path: Path) -> list[Company]:
    """``Canonical name|alias|alias`` per line; ``#`` starts a comment; the canonical name is an alias too."""
    companies: list[Company] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        names = [n.strip() for n in line.split("|") if n.strip()]
        companies.append(Company(names[0], tuple(dict.fromkeys(names))))
    return companies


class EntityTagger:
    """Cashtags (``$AAPL``) and company names from a list (case-sensitive, whole words, longest alias first)."""

    def __init__(self, companies: list[Company]) -> None:
        self._by_alias: dict[str, str] = {}
        for company in companies:
            for alias in company.aliases:
                self._by_alias.setdefault(alias, company.name)
        aliases = list(self._by_alias)
        # one trie-shaped pattern (shared prefixes factored out), tried only where an alias can start: a few
        # hundred aliases then cost about as much as one word lookup per capitalised word
        first_chars = "".join(sorted({re.escape(a[0]) for a in aliases}))
        self._company_re = (
            re.compile(r"(?<![\w])(?=[" + first_chars + r"])(" + _trie_pattern(aliases) + r")(?![\w])")
            if aliases
            else None
        )

    @classmethod
    def from_file(cls, path: Path) -> EntityTagger:
        return cls(load_companies(path))

    def tag(self, text: str) -> list[Entity]:
        found: dict[tuple[str, str], Entity] = {}
        for match in CASHTAG_RE.finditer(text):
            value = "$" + match.group(1).upper()
            found.setdefault(("cashtag", value), Entity(type="cashtag", value=value))
        if self._company_re is not None:
            for match in self._company_re.finditer(text):
                surface = match.group(1)
                name = self._by_alias[surface]
                found.setdefault(
                    ("company", name), Entity(type="company", value=name, text=surface if surface != name else None)
                )
        return list(found.values())

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


# C0/C1 control characters, surrogates and non-characters: CLD2 refuses a text containing them
_CLD2_UNSAFE_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")
LANGUAGE_BACKENDS = ("cld2", "py3langid")


class LanguageDetector:
    """The language of a bounded prefix of the text (ISO 639-1 where one exists), ``None`` when unknown.

    ``backend="cld2"`` (default): Google's Compact Language Detector 2 (pycld2, C++), ~20 us for 200 characters;
    ``None`` when it finds no reliable-enough language (very short or mostly non-letter text).
    ``backend="py3langid"``: the pure-Python naive-Bayes identifier, ~8x slower, always names some language; it is
    also the fallback for the rare text CLD2 refuses.
    """

    def __init__(self, sample_chars: int = 200, backend: str = "cld2") -> None:
        if backend not in LANGUAGE_BACKENDS:
            raise ValueError(f"unknown language backend {backend!r}; one of {LANGUAGE_BACKENDS}")
        self.sample_chars = sample_chars
        self.backend = backend
        self._identifier: Any = None
        self._lock = threading.Lock()
        self._cld2: Any = None
        if backend == "cld2":
            import pycld2

            self._cld2 = pycld2
        else:
            self._load_py3langid()

    def _load_py3langid(self) -> Any:
        with self._lock:
            if self._identifier is None:
                from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

                identifier = LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=False)
                # the shipped feature table is float16, which numpy multiplies in software: one float32 copy
                # (~57 MB) makes each score about 3x cheaper, the same argmax
                table = getattr(identifier, "nb_ptc", None)
                if table is not None and getattr(table, "dtype", None) == np.float16:
                    identifier.nb_ptc = table.astype(np.float32)
                self._identifier = identifier
            return self._identifier

    def _py3langid(self, sample: str) -> str:
        identifier = self._identifier or self._load_py3langid()
        with self._lock:
            lang, _score = identifier.classify(sample)
        return str(lang)

    def detect(self, text: str) -> str | None:
        sample = text[: self.sample_chars]
        if len(sample.strip()) < 3:
            return None
        if self._cld2 is None:
            return self._py3langid(sample)
        try:
            _reliable, _nbytes, details = self._cld2.detect(sample)
        except (self._cld2.error, UnicodeError):
            try:
                _reliable, _nbytes, details = self._cld2.detect(_CLD2_UNSAFE_RE.sub(" ", sample))
            except (self._cld2.error, UnicodeError):
                return self._py3langid(sample.encode("utf-8", "replace").decode("utf-8"))
        code = str(details[0][1])
        return None if code == "un" else code


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
        # one trie-shaped pattern (shared prefixes factored out). It deliberately starts with the trie itself, not
        # with a word-boundary look-behind: then the regex engine skips ahead to the characters an alias can start
        # with (a C-level scan) instead of trying every position; the left boundary is checked in :meth:`tag`.
        self._company_re = re.compile("(?:" + _trie_pattern(aliases) + r")(?!\w)") if aliases else None

    @classmethod
    def from_file(cls, path: Path) -> EntityTagger:
        return cls(load_companies(path))

    def tag(self, text: str) -> list[Entity]:
        found: dict[tuple[str, str], Entity] = {}
        if "$" in text:
            for match in CASHTAG_RE.finditer(text):
                value = "$" + match.group(1).upper()
                found.setdefault(("cashtag", value), Entity(type="cashtag", value=value))
        if self._company_re is not None:
            for surface in self._company_matches(text):
                name = self._by_alias[surface]
                found.setdefault(
                    ("company", name), Entity(type="company", value=name, text=surface if surface != name else None)
                )
        return list(found.values())

    def _company_matches(self, text: str) -> list[str]:
        """Aliases that stand as whole words, leftmost first (what ``(?<!\\w)alias(?!\\w)`` would find)."""
        assert self._company_re is not None
        search = self._company_re.search
        out: list[str] = []
        pos = 0
        while (match := search(text, pos)) is not None:
            start = match.start()
            if start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
                pos = start + 1  # inside a word ("Applebee's" is not "Apple"): try again one character later
                continue
            out.append(match.group(0))
            pos = match.end()
        return out

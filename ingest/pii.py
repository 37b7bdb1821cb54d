"""PII redaction of customer-service text, applied before anything is published.

Detectors run on the original text in priority order (e-mail, IBAN, payment card, account-like numbers, phone,
person names); a later detector's span that overlaps an earlier one is ignored. Every kept span is replaced by a
typed placeholder (``[EMAIL]``, ``[IBAN]``, ``[CARD]``, ``[ACCOUNT]``, ``[PHONE]``, ``[NAME]``) and counted per type.
The counts go to ``RawDocument.redactions``; the values never leave this module.

Checks come from libraries: payment cards must pass the Luhn checksum (``stdnum.luhn``), IBANs their ISO 7064
mod-97 checksum (``stdnum.iban``), phone numbers must be valid numbers for a configured region (``phonenumbers``).
Person names use an offline gazetteer of first names plus context cues ("my name is", "Mr.", a sign-off); no model
download is possible here, so recall on names is lower than on the checksum-backed types (see ``pii-eval``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

DATA_DIR = Path(__file__).resolve().parent / "data"
PII_TYPES: tuple[str, ...] = ("EMAIL", "IBAN", "CARD", "ACCOUNT", "PHONE", "NAME")
DEFAULT_REGIONS: tuple[str, ...] = ("GB", "US", "DE", "FR", "ES", "IE", "NL", "IN", "AU")


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    type: str


EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])"
)
# two letters, two check digits, then 11-30 alphanumerics, optionally grouped by single spaces
IBAN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")
# 13-19 digits, optionally separated by single spaces or dashes
CARD_RE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
ACCOUNT_CUE = (
    r"(?:account|acct|a/c|acc(?:ount)?\s*(?:no|num|number|#)|customer\s*(?:no|number|id)|member(?:ship)?\s*"
    r"(?:no|number)|reference\s*number|policy\s*(?:no|number)|roll\s*number|building\s*society\s*number)"
)
ACCOUNT_CUE_WORDS = ("acc", "a/c", "customer", "member", "reference", "policy", "roll", "building", "sort")
ACCOUNT_RE = re.compile(ACCOUNT_CUE + r"[^\d\n]{0,25}?(?P<num>(?<!\d)\d(?:[ -]?\d){7,11}(?!\d))", re.IGNORECASE)
SORT_CODE_RE = re.compile(r"sort[\s-]*code[^\d\n]{0,15}?(?P<num>(?<!\d)\d{2}[- ]?\d{2}[- ]?\d{2}(?!\d))", re.IGNORECASE)
# a capitalised name word, with the Irish/Scottish prefixes (O'Brien, McDonald, MacLeod) and double-barrelled names
NAME_WORD = r"(?:O['’]|Mc|Mac)?[A-Z][a-z]+(?:-[A-Z][a-z]+)?"
TITLE_RE = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+(?P<name>" + NAME_WORD + r"(?:\s+" + NAME_WORD + r")?)")
INTRO_RE = re.compile(
    r"\b(?:[Mm]y name is|[Mm]y name's|[Tt]his is|I am|I'm|[Nn]ame:|[Cc]alled|[Ss]poke (?:to|with)|"
    r"[Tt]alked to|[Aa]gent|[Aa]dvisor|[Cc]olleague|[Hh]usband|[Ww]ife|[Ss]on|[Dd]aughter|[Pp]artner)\s*,?\s+"
    r"(?P<name>" + NAME_WORD + r"(?:\s+" + NAME_WORD + r")?)"
)
SIGNOFF_RE = re.compile(
    r"(?:^|\n|[.!]\s+)(?:[Tt]hanks|[Tt]hank you|[Rr]egards|[Kk]ind regards|[Bb]est(?: regards| wishes)?|[Cc]heers|"
    r"[Ss]incerely|[Yy]ours sincerely|[Mm]any thanks)\s*[,.!-]?\s*(?P<name>"
    + NAME_WORD
    + r"(?:\s+"
    + NAME_WORD
    + r")?)\s*[.!]?\s*$"
)
# a run of digits with phone punctuation, optionally led by + or (; a window for the phone matcher
PHONE_WINDOW_RE = re.compile(r"[+(]?\d[\d \t().\-/]{4,24}\d(?:\s*(?:ext\.?|x)\s*\d{1,5})?")
PHONE_SHAPE_RE = re.compile(r"^\+|^\(|\d[ .\-/()]+\d")
PHONE_CUE_RE = re.compile(r"(?:phone|call|tel|mobile|cell|landline|ring|text|whatsapp|number|on)\W{0,12}$", re.I)
# a look-ahead, so pairs may overlap: in "Contact Niamh Garcia" the pair "Contact Niamh" must not hide "Niamh Garcia"
CAP_PAIR_RE = re.compile(r"\b(?P<first>[A-Z][a-z]+)(?=\s+(?P<last>" + NAME_WORD + r")\b)")
# a strong cue followed by a lower-case name ("my name is sarah jones"): taken only when the first word is a known
# first name; the second word only when it is not a common word
LOWER_INTRO_RE = re.compile(
    r"\b(?:[Mm]y name is|[Mm]y name's|[Nn]ame:|[Ss]igned:?)\s+(?P<first>[a-z]+)(?:\s+(?P<last>[a-z]+(?:-[a-z]+)?))?\b"
)
# words that follow a first name but are not surnames (lower-case writing)
NOT_SURNAME_WORDS = frozenset(
    {
        "a",
        "again",
        "also",
        "am",
        "an",
        "and",
        "are",
        "as",
        "at",
        "but",
        "by",
        "calling",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "here",
        "i",
        "im",
        "in",
        "is",
        "it",
        "just",
        "me",
        "my",
        "need",
        "not",
        "of",
        "on",
        "or",
        "please",
        "really",
        "so",
        "still",
        "thank",
        "thanks",
        "the",
        "there",
        "this",
        "to",
        "today",
        "tomorrow",
        "trying",
        "very",
        "want",
        "was",
        "we",
        "were",
        "will",
        "with",
        "would",
        "yesterday",
        "yet",
    }
)

# e-mail addresses written to dodge scrapers: "jane dot doe at example dot com", "jane(at)example(dot)com",
# "jane @ example . com". The domain must end in a common top-level domain or a two-letter country code.
# "@" and "." count with spaces on both sides or none: "thanks @united. Is" is a mention and a sentence end
_OB_AT = r"(?:\s*[(\[{<]\s*at\s*[)\]}>]\s*|\s+at\s+|\s+@\s+|@)"
_OB_DOT = r"(?:\s*[(\[{<]\s*dot\s*[)\]}>]\s*|\s+dot\s+|\s+\.\s+|\.)"
_OB_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# lower case only (a scoped flag): "No" and "Is" after a full stop are sentence starts, not .no and .is
_OB_TLD = r"(?-i:com|org|net|edu|gov|info|biz|io|co|me|email|mail|online|[a-z]{2})"
# found from the "at" outwards: one pattern for the whole address would be tried at every position of the text
# (~200 us per KB); the "at" tokens are few, and the local part and the domain are matched next to each one
OB_AT_TOKEN_RE = re.compile(r"[(\[{<]\s*at\s*[)\]}>]|\sat\s|\s@\s|@", re.IGNORECASE)
OB_LOCAL_RE = re.compile(
    r"(?<![\w.@-])[a-z0-9][a-z0-9_%+-]*(?:" + _OB_DOT + r"[a-z0-9][a-z0-9_%+-]*){0,3}\Z", re.IGNORECASE
)
OB_DOMAIN_RE = re.compile(
    _OB_LABEL + r"(?:" + _OB_DOT + _OB_LABEL + r"){0,4}" + _OB_DOT + _OB_TLD + r"(?![\w@-])", re.IGNORECASE
)
# the plain-word form ("x at y dot com") is ordinary English too ("we met at the dot com party"): it needs an
# e-mail cue shortly before it; the bracketed and spaced-@ forms are unambiguous on their own
EMAIL_CUE_RE = re.compile(r"(?:e-?mail|mail|inbox|address|write to|reach me|contact)\b[^\n]{0,30}$", re.IGNORECASE)
_OB_STRONG_RE = re.compile(r"[(\[{<]\s*(?:at|dot)\s*[)\]}>]|@", re.IGNORECASE)
_OB_WORD_DOT_RE = re.compile(r"\sdot\s", re.IGNORECASE)


def load_wordlist(path: Path) -> frozenset[str]:
    words = set()
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            words.add(line)
    return frozenset(words)


class Redactor:
    """Find and replace personal data in one text. Thread-safe (no mutable state after construction)."""

    def __init__(
        self,
        *,
        regions: Sequence[str] = DEFAULT_REGIONS,
        first_names: Iterable[str] | None = None,
        not_names: Iterable[str] | None = None,
        detect_names: bool = True,
    ) -> None:
        self.regions = tuple(regions)
        self.first_names = (
            frozenset(first_names) if first_names is not None else load_wordlist(DATA_DIR / "first_names.txt")
        )
        self.not_names = frozenset(not_names) if not_names is not None else load_wordlist(DATA_DIR / "not_names.txt")
        self.detect_names = detect_names

    # ---- detectors ------------------------------------------------------------------------------------------

    def _emails(self, text: str) -> Iterable[Span]:
        for m in EMAIL_RE.finditer(text):
            yield Span(m.start(), m.end(), "EMAIL")

    def _obfuscated_emails(self, text: str) -> Iterable[Span]:
        taken_until = 0
        for token in OB_AT_TOKEN_RE.finditer(text):
            if token.start() < taken_until:
                continue
            window_start = max(0, token.start() - 80)
            before = text[window_start : token.start()].rstrip()
            local = OB_LOCAL_RE.search(before)
            if local is None:
                continue
            domain_at = token.end()
            while domain_at < len(text) and text[domain_at].isspace():
                domain_at += 1
            domain = OB_DOMAIN_RE.match(text, domain_at)
            if domain is None:
                continue
            start, end = window_start + local.start(), domain.end()
            written = text[start:end]
            if EMAIL_RE.fullmatch(written):
                continue  # a plain address: the regular detector has it
            # words only ("at", "dot"): at least one spelled "dot" in the domain, and an e-mail cue before it
            if not _OB_STRONG_RE.search(written) and (
                not _OB_WORD_DOT_RE.search(domain.group(0)) or not EMAIL_CUE_RE.search(text[max(0, start - 40) : start])
            ):
                continue
            taken_until = end
            yield Span(start, end, "EMAIL")

    def _ibans(self, text: str) -> Iterable[Span]:
        for m in IBAN_RE.finditer(text):
            candidate = m.group(0)
            # trailing words glued by the optional-space groups: shrink until the checksum holds
            tokens = candidate.split(" ")
            for end in range(len(tokens), 0, -1):
                value = " ".join(tokens[:end])
                if len(value.replace(" ", "")) < 15:
                    break
                if stdnum_iban.is_valid(value):
                    yield Span(m.start(), m.start() + len(value), "IBAN")
                    break

    def _cards(self, text: str) -> Iterable[Span]:
        for m in CARD_RE.finditer(text):
            digits = re.sub(r"[ -]", "", m.group(0))
            if 13 <= len(digits) <= 19 and luhn.is_valid(digits) and len(set(digits)) > 1:
                yield Span(m.start(), m.end(), "CARD")

    def _accounts(self, text: str) -> Iterable[Span]:
        lowered = text.lower()
        if not any(cue in lowered for cue in ACCOUNT_CUE_WORDS):
            return
        for m in ACCOUNT_RE.finditer(text):
            yield Span(m.start("num"), m.end("num"), "ACCOUNT")
        for m in SORT_CODE_RE.finditer(text):
            yield Span(m.start("num"), m.end("num"), "ACCOUNT")

    def _phones(self, text: str) -> Iterable[Span]:
        # phonenumbers' matcher is slow on long texts: run it only on the windows where a phone-shaped run of
        # digits is (a cheap regex), with the window's offset added back
        for window in PHONE_WINDOW_RE.finditer(text):
            if sum(c.isdigit() for c in window.group(0)) < 6:
                continue
            yield from self._phones_in(text, window.start(), window.group(0))

    def _phones_in(self, text: str, offset: int, chunk: str) -> Iterable[Span]:
        for region in self.regions:
            for match in phonenumbers.PhoneNumberMatcher(chunk, region, leniency=phonenumbers.Leniency.VALID):
                start, end = offset + match.start, offset + match.end
                # a bare digit run ("transaction ID 883920174") is a valid number somewhere: only take it when it
                # is written like a phone number or a phone word precedes it
                before = text[max(0, start - 30) : start]
                if (start > 0 and text[start - 1].isdigit()) or (end < len(text) and text[end].isdigit()):
                    continue
                if not (PHONE_SHAPE_RE.search(match.raw_string) or PHONE_CUE_RE.search(before)):
                    continue
                yield Span(start, end, "PHONE")
        # international format is unambiguous enough to accept numbers outside the metadata's assigned ranges
        for match in phonenumbers.PhoneNumberMatcher(chunk, "ZZ", leniency=phonenumbers.Leniency.POSSIBLE):
            digits = sum(c.isdigit() for c in match.raw_string)
            if match.raw_string.startswith("+") and 10 <= digits <= 15:
                yield Span(offset + match.start, offset + match.end, "PHONE")

    def _names(self, text: str) -> Iterable[Span]:
        for regex in (TITLE_RE, INTRO_RE, SIGNOFF_RE):
            for m in regex.finditer(text):
                words = m.group("name").split()
                # a cue is strong evidence, but "I am Not happy" is not a name: the first word must not be a
                # common capitalised word unless it is a known first name
                if words[0] in self.not_names and words[0] not in self.first_names:
                    continue
                if regex is INTRO_RE and words[0] not in self.first_names:
                    continue
                start = m.start("name")
                end = start + len(words[0])
                if len(words) > 1 and words[1] not in self.not_names:
                    end = m.end("name")
                yield Span(start, end, "NAME")
        for m in CAP_PAIR_RE.finditer(text):
            if m.group("first") in self.first_names and m.group("last") not in self.not_names:
                yield Span(m.start(), m.end("last"), "NAME")
        if "name" not in text.lower() and "igned" not in text:
            return
        for m in LOWER_INTRO_RE.finditer(text):
            if m.group("first").title() not in self.first_names:
                continue
            end = m.end("first")
            last = m.group("last")
            if last and last not in NOT_SURNAME_WORDS and last.title() not in self.not_names:
                end = m.end("last")
            yield Span(m.start("first"), end, "NAME")

    # ---- API ------------------------------------------------------------------------------------------------

    def find(self, text: str) -> list[Span]:
        """Non-overlapping spans, earlier detectors winning, in text order."""
        # cheap gates: most messages have no '@' and too few digits for any numeric identifier
        digits = sum(c.isdigit() for c in text)
        detectors = [self._emails] if "@" in text else []
        lowered = text.lower()
        if (
            "@" in text
            or " at" in lowered
            or "at)" in lowered
            or "at]" in lowered
            or "at}" in lowered
            or "at>" in lowered
        ):
            detectors.append(self._obfuscated_emails)
        if digits >= 6:
            detectors += [self._ibans, self._cards, self._accounts, self._phones]
        if self.detect_names:
            detectors.append(self._names)
        taken: list[Span] = []
        for detect in detectors:
            for span in detect(text):
                if not any(span.start < t.end and t.start < span.end for t in taken):
                    taken.append(span)
        return sorted(taken)

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with every span replaced by ``[TYPE]``, and the number of replacements per type."""
        spans = self.find(text)
        if not spans:
            return text, {}
        out: list[str] = []
        pos = 0
        for span in spans:
            out.append(text[pos : span.start])
            out.append(f"[{span.type}]")
            pos = span.end
        out.append(text[pos:])
        return "".join(out), dict(Counter(s.type for s in spans))


# ---- evaluation -------------------------------------------------------------------------------------------------


@dataclass
class TypeScore:
    gold: int = 0
    predicted: int = 0
    true_positive_pred: int = 0
    covered_gold: int = 0

    @property
    def precision(self) -> float:
        return self.true_positive_pred / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.covered_gold / self.gold if self.gold else 1.0


def evaluate(redactor: Redactor, examples: Iterable[dict[str, object]]) -> dict[str, object]:
    """Span-level precision and recall per type on a labeled set.

    Each example is ``{"text": str, "spans": [{"start": int, "end": int, "type": str}, ...]}``. A predicted span is
    correct when it overlaps a gold span of the same type; a gold span is found when a predicted span of its type
    overlaps it. Also reports leaked gold values (gold text still present verbatim after redaction).
    """
    scores = {t: TypeScore() for t in PII_TYPES}
    n = 0
    leaks = 0
    for ex in examples:
        n += 1
        text = str(ex["text"])
        raw_spans = ex.get("spans") or []
        assert isinstance(raw_spans, list)
        gold = [Span(int(s["start"]), int(s["end"]), str(s["type"])) for s in raw_spans]
        pred = redactor.find(text)
        redacted, _ = redactor.redact(text)
        for g in gold:
            scores[g.type].gold += 1
            if any(p.type == g.type and p.start < g.end and g.start < p.end for p in pred):
                scores[g.type].covered_gold += 1
            if text[g.start : g.end] in redacted:
                leaks += 1
        for p in pred:
            scores[p.type].predicted += 1
            if any(p.type == g.type and p.start < g.end and g.start < p.end for g in gold):
                scores[p.type].true_positive_pred += 1
    per_type = {
        t: {
            "gold": s.gold,
            "predicted": s.predicted,
            "precision": round(s.precision, 4),
            "recall": round(s.recall, 4),
        }
        for t, s in scores.items()
    }
    return {"examples": n, "leaked_gold_values": leaks, "per_type": per_type}

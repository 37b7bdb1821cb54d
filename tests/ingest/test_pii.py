"""PII redaction: checksum-backed detectors, hard negatives, and the figures on the labeled set."""

from __future__ import annotations

import json

import pytest

from ingest.pii import DATA_DIR, Redactor, evaluate


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


def test_luhn_valid_card_is_redacted_in_every_layout(redactor: Redactor) -> None:
    for card in ("4539 1488 0343 6467", "4539-1488-0343-6467", "4539148803436467", "3714 496353 98431"):
        text, counts = redactor.redact(f"my card {card} was charged twice")
        assert card not in text
        assert counts == {"CARD": 1}
        assert "[CARD]" in text


def test_order_number_failing_luhn_is_kept(redactor: Redactor) -> None:
    text, counts = redactor.redact("order 4539148803436468 has not arrived")
    assert "4539148803436468" in text
    assert counts == {}


def test_iban_checksum_decides(redactor: Redactor) -> None:
    text, counts = redactor.redact("send it to GB82 WEST 1234 5698 7654 32 today")
    assert text == "send it to [IBAN] today" and counts == {"IBAN": 1}
    # one digit off: the mod-97 check fails, nothing is redacted as an IBAN
    text, counts = redactor.redact("send it to GB83 WEST 1234 5698 7654 32 today")
    assert "IBAN" not in counts


def test_email_phone_account_and_sort_code(redactor: Redactor) -> None:
    text, counts = redactor.redact(
        "Email jane.doe@example.co.uk or call +44 20 7946 0958; account number 12345678, sort code 20-00-00."
    )
    assert text == "Email [EMAIL] or call [PHONE]; account number [ACCOUNT], sort code [ACCOUNT]."
    assert counts == {"EMAIL": 1, "PHONE": 1, "ACCOUNT": 2}


def test_bare_digit_runs_are_not_phone_numbers(redactor: Redactor) -> None:
    for text in ("transaction ID 883920174 appears twice", "I paid 1250.00 on 04/11/2026 at 7:45pm, ticket 55321"):
        assert redactor.redact(text) == (text, {})


def test_names_with_cues_and_without(redactor: Redactor) -> None:
    text, counts = redactor.redact("Hi, my name is Sarah Connor. I spoke to Mr. Patel. Thanks, James")
    assert text == "Hi, my name is [NAME]. I spoke to Mr. [NAME]. Thanks, [NAME]"
    assert counts == {"NAME": 3}
    # capitalised words after a cue that are not names stay
    assert redactor.redact("I am Not happy with this. Thanks, Customer Service")[1] == {}


@pytest.mark.parametrize(
    "written",
    [
        "j.smith (at) example (dot) org",
        "anna[at]mailbox[dot]com",
        "Anna.Berg AT mailbox DOT co DOT uk",
        "kim @ example . com",
        "kim@example dot com",
        "ola_nordmann{at}post{dot}no",
    ],
)
def test_obfuscated_emails_are_redacted(redactor: Redactor, written: str) -> None:
    text, counts = redactor.redact(f"if you need more, mail {written} thanks")
    assert text == "if you need more, mail [EMAIL] thanks" and counts == {"EMAIL": 1}


def test_spelled_out_email_needs_a_cue(redactor: Redactor) -> None:
    assert redactor.redact("reach me at karl dot weber at firma dot de")[1] == {"EMAIL": 1}
    for text in (
        "we met at the dot com party",  # no e-mail cue
        "please look at example.com for the terms",  # a web site, not an address
        "email me: I will be at home dot",  # no top-level domain
        "thanks @united. Is my bag on flight 12?",  # a mention and a sentence end
        "stuck on @CheapOair. No answer",  # same, no space after "@" but one after "."
        "I arrived 25th @ night. Is that late?",
        "emailed you at 5 pm at the office",
    ):
        assert redactor.redact(text) == (text, {}), text


def test_names_next_to_other_capitalised_words(redactor: Redactor) -> None:
    # "Contact Fatima" is not a pair of names, "Fatima Halvorsen" is: overlapping pairs are both looked at
    assert redactor.redact("Contact Fatima Halvorsen today")[0] == "Contact [NAME] today"
    assert redactor.redact("The agent was George O'Sullivan and then Mr. McAllister")[0] == (
        "The agent was [NAME] and then Mr. [NAME]"
    )
    assert redactor.redact("my flight to San Juan International Airport was late")[1] == {}
    assert redactor.redact("it IS John Hughes' birthday")[0] == "it IS [NAME]' birthday"


def test_lower_case_names_after_a_strong_cue(redactor: Redactor) -> None:
    assert redactor.redact("hello my name is fatima haddad and my card is blocked")[0] == (
        "hello my name is [NAME] and my card is blocked"
    )
    assert redactor.redact("my name is george and i want a refund")[0] == "my name is [NAME] and i want a refund"
    # not a known first name, or not a name at all: kept
    for text in ("my name is on the account", "my name is wrong on the card", "my name is mispelled"):
        assert redactor.redact(text) == (text, {}), text


def test_labeled_set_figures() -> None:
    """The committed set (>= 200 snippets): checksum-backed types must be near perfect, names are best effort."""
    path = DATA_DIR / "pii_eval.jsonl"
    examples = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(examples) >= 200
    report = evaluate(Redactor(), examples)
    per_type = report["per_type"]
    assert isinstance(per_type, dict)
    for kind in ("CARD", "IBAN", "ACCOUNT", "PHONE"):
        assert per_type[kind]["recall"] >= 0.95, (kind, per_type[kind])
        assert per_type[kind]["precision"] >= 0.95, (kind, per_type[kind])
    assert per_type["EMAIL"]["precision"] >= 0.95
    assert per_type["EMAIL"]["recall"] >= 0.95  # spelled-out addresses included
    assert per_type["NAME"]["recall"] >= 0.9
    assert per_type["NAME"]["precision"] >= 0.9


def test_held_out_hard_set_figures() -> None:
    """The small hard set written apart from the main one (other phrasings, unlisted names, hard negatives)."""
    path = DATA_DIR / "pii_hard.jsonl"
    examples = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    report = evaluate(Redactor(), examples)
    per_type = report["per_type"]
    assert isinstance(per_type, dict)
    for kind in ("CARD", "IBAN", "ACCOUNT", "PHONE", "EMAIL"):
        assert per_type[kind]["precision"] == 1.0, (kind, per_type[kind])
    assert per_type["EMAIL"]["recall"] >= 0.8
    assert per_type["NAME"]["precision"] >= 0.8 and per_type["NAME"]["recall"] >= 0.6

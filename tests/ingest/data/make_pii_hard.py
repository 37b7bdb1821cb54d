"""Generate ``ingest/data/pii_hard.jsonl``: a small labeled set written apart from ``pii_eval.jsonl``.

Written after the redactor's second round of changes, by hand, in phrasings and with names the main set's templates
do not use (names outside the first-name list, obfuscations of other shapes, regions that are not configured),
plus hard negatives. It is reported on, never tuned on: its misses are the known limits (see docs/ingest.md).
Markup: ``{TYPE:value}`` marks a gold span. Run: ``.venv/bin/python tests/ingest/data/make_pii_hard.py``.
Every value is fictional (test card numbers, the IBAN registry's example accounts, drama/fictional phone ranges).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[3] / "ingest" / "data" / "pii_hard.jsonl"
MARK = re.compile(r"\{(EMAIL|IBAN|CARD|ACCOUNT|PHONE|NAME):([^{}]+)\}")

LINES = [
    # e-mails in other disguises
    "You can write to {EMAIL:h.nakamura (at) example (dot) jp} if the form fails again.",
    "my mail is {EMAIL:bruno.costa[at]correio[dot]pt}, nobody replied",
    "Please send the statement to {EMAIL:olsen_k @ posteo . de} before Friday.",
    "contact: {EMAIL:aroha dot ngata at example dot nz}",
    "it's {EMAIL:ben dot okoro at example dot com}, the same as last time",  # no cue word: a known miss
    "My address is {EMAIL:zofia@example.pl} and my old one {EMAIL:zofia.k@example.org} is closed.",
    # names outside the gazetteer, in other shapes
    "I spoke with {NAME:Ingrid Halvorsen} at the branch and she was great.",  # unlisted first name: a known miss
    "{NAME:Tariq Al-Mansouri} here, the transfer still has not arrived.",  # no cue, unlisted name: a known miss
    "Regards,\n{NAME:Siobhan McGuinness}",
    "my name is {NAME:yusuf demir} and I was charged twice",
    "The advisor, {NAME:Mr. Okonkwo}, told me to wait.",
    "Thanks to {NAME:Fatima} for sorting it out!",  # a bare first name after "Thanks to": a known miss
    "Account holder: {NAME:Hiroshi Tanaka}",
    "Please ask {NAME:Sarah O'Connell} to call me back.",
    # numbers
    "Card {CARD:4111 1111 1111 1111} was declined at the till.",
    "refund to {IBAN:DE89 3704 0044 0532 0130 00} please",
    "Pay it into {IBAN:GB82WEST12345698765432}.",
    "my account no. is {ACCOUNT:00123456} at the Leeds branch",
    "ring me on {PHONE:07700 900461} after six",
    "Office line {PHONE:(212) 555-0147}, ask for billing.",
    "In Tokyo you can reach me at {PHONE:+81 3 1234 5678}.",
    "Tokyo office: {PHONE:03-1234-5678}",
    # hard negatives: nothing here is personal data
    "We met at the dot com party in 2001 and talked about the bank.",
    "Look at example.com for the terms and conditions.",
    "Order 4111 1111 1111 1112 was shipped on 12/03/2026.",
    "The fee was 1,250.00 EUR on 04/11/2026 at 7:45pm.",
    "Tracking code GB12 3456 7890 1234 is not moving.",
    "My name is on the account but the card says otherwise.",
    "Thanks, Customer Service Team",
    "I flew into San Juan International Airport and then to Boston Logan.",
    "thanks @united. Is my bag on flight 1584?",
    "Apple Pay and Google Wallet both fail with error 4012.",
    "Will Power and Grace Period are the names of the two plans?",  # "Grace Period": a known false name
    "Reference 88213 / ticket 55321 / case 2026-04-11",
]


def render(line: str) -> dict[str, object]:
    text, spans, pos = "", [], 0
    for m in MARK.finditer(line):
        text += line[pos : m.start()]
        start = len(text)
        text += m.group(2)
        spans.append({"start": start, "end": len(text), "type": m.group(1)})
        pos = m.end()
    text += line[pos:]
    return {"text": text, "spans": spans}


def main() -> None:
    OUT.write_text("".join(json.dumps(render(line), ensure_ascii=False) + "\n" for line in LINES), encoding="utf-8")
    print(f"wrote {len(LINES)} examples to {OUT}")


if __name__ == "__main__":
    main()

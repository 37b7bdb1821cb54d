"""Generate the labeled PII evaluation set ``ingest/data/pii_eval.jsonl`` (synthetic, realistic, deterministic).

Run: ``.venv/bin/python tests/ingest/data/make_pii_eval.py``. Every value is fake: cards are random Luhn-valid
numbers from test BIN ranges, IBANs get computed check digits, phone numbers come from fictional/drama ranges.
The set mixes easy cases, formats the redactor is known to miss (spelled-out e-mails, lower-case names) and hard
negatives (order numbers failing Luhn, dates, amounts, tracking codes), so the reported figures are honest.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from stdnum import iban, luhn

OUT = Path(__file__).resolve().parents[3] / "ingest" / "data" / "pii_eval.jsonl"
rng = random.Random(20261122)

FIRST = [
    "Sarah",
    "James",
    "Priya",
    "Tom",
    "Olivia",
    "Mohammed",
    "Niamh",
    "Lukas",
    "Chloe",
    "David",
    "Aisha",
    "Gareth",
    "Emma",
    "Kwame",
    "Sofia",
    "Liam",
    "Hannah",
    "Raj",
    "Claire",
    "Piotr",
]
LAST = [
    "Connor",
    "Patel",
    "Okafor",
    "Smith",
    "Jones",
    "Nguyen",
    "Murphy",
    "Schmidt",
    "Dubois",
    "Kowalski",
    "Brown",
    "Hughes",
    "Khan",
    "Garcia",
    "Evans",
    "Mensah",
    "O'Brien",
    "Taylor",
    "Williams",
    "Fischer",
]
DOMAINS = ["example.com", "mail.example.co.uk", "example.org", "inbox.example.net", "example.de"]


def card() -> str:
    prefix = rng.choice(["4539", "4556", "5425", "5105", "3714", "6011"])
    length = 15 if prefix.startswith("37") else 16
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    num = body + luhn.calc_check_digit(body)
    style = rng.choice(["space", "dash", "plain"])
    if style == "plain":
        return num
    sep = " " if style == "space" else "-"
    groups = [num[i : i + 4] for i in range(0, len(num), 4)]
    return sep.join(groups)


def bad_card() -> str:
    body = "4" + "".join(str(rng.randrange(10)) for _ in range(15))
    while luhn.is_valid(body):
        body = body[:-1] + str((int(body[-1]) + 1) % 10)
    return body


def make_iban() -> str:
    """A checksum-valid IBAN (national check digits included: real IBANs pass them)."""
    while True:
        value = _iban_candidate()
        if iban.is_valid(value):
            return value


def _iban_candidate() -> str:
    country, bban = rng.choice(
        [
            ("GB", "WEST" + "".join(str(rng.randrange(10)) for _ in range(14))),
            ("DE", "".join(str(rng.randrange(10)) for _ in range(18))),
            ("FR", "".join(str(rng.randrange(10)) for _ in range(23))),
            ("NL", "ABNA" + "".join(str(rng.randrange(10)) for _ in range(10))),
            ("ES", "".join(str(rng.randrange(10)) for _ in range(20))),
            ("IE", "AIBK" + "".join(str(rng.randrange(10)) for _ in range(14))),
        ]
    )
    check = iban.calc_check_digits(country + "00" + bban)
    value = country + check + bban
    if rng.random() < 0.6:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def bad_iban() -> str:
    value = make_iban().replace(" ", "")
    digit = (int(value[2]) + 1) % 10
    return value[:2] + str(digit) + value[3:]


def phone() -> str:
    n3 = rng.randrange(100, 999)
    return rng.choice(
        [
            f"07700 900{n3}",
            f"+44 7700 900{n3}",
            f"020 7946 0{n3}",
            f"+44 20 7946 0{n3}",
            f"(212) 555-0{rng.randrange(100, 199)}",
            f"+1 415 555 0{rng.randrange(100, 199)}",
            f"212-555-0{rng.randrange(100, 199)}",
            f"+49 30 901820{rng.randrange(10, 99)}",
            f"+33 1 40 20 {rng.randrange(10, 99)} {rng.randrange(10, 99)}",
            f"0161 496 0{n3}",
        ]
    )


def account() -> str:
    return "".join(str(rng.randrange(10)) for _ in range(rng.choice([8, 8, 10, 12])))


def sort_code() -> str:
    return f"{rng.randrange(10, 99)}-{rng.randrange(10, 99)}-{rng.randrange(10, 99)}"


def email(first: str, last: str) -> str:
    user = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}{rng.randrange(10, 99)}", f"{last}.{first}"])
    return user.lower().replace("'", "") + "@" + rng.choice(DOMAINS)


def fullname() -> tuple[str, str, str]:
    f, last = rng.choice(FIRST), rng.choice(LAST)
    return f, last, f"{f} {last}"


# A template is a list of literal strings and (TYPE, value) pairs.
def templates() -> list[list[object]]:
    f, last, full = fullname()
    f2, _, full2 = fullname()
    options: list[list[object]] = [
        [
            "Hi, my name is ",
            ("NAME", full),
            " and my card ",
            ("CARD", card()),
            " was charged twice for the same order.",
        ],
        ["Please call me back on ", ("PHONE", phone()), ", I have been waiting three days for my refund."],
        ["You can reach me at ", ("EMAIL", email(f, last)), " about the blocked transfer."],
        ["The transfer to ", ("IBAN", make_iban()), " bounced back and I was charged a fee of £25."],
        [
            "My account number is ",
            ("ACCOUNT", account()),
            " and sort code ",
            ("ACCOUNT", sort_code()),
            ", why is my balance wrong?",
        ],
        ["I spoke to ", ("NAME", f2), " on the phone yesterday and nobody followed up."],
        ["Dear team, my card ending 4421 was declined at the petrol station. Regards, ", ("NAME", full)],
        ["Order 4821-9937-1102 has not arrived and the tracking number JD0146000039920 shows nothing."],
        ["Contact ", ("NAME", full), " at ", ("EMAIL", email(f, last)), " or ", ("PHONE", phone()), "."],
        ["Why was £1,250.00 taken on 04/11/2026 when my limit is £1,000?"],
        ["I paid with ", ("CARD", card()), " but the merchant says it never arrived."],
        ["This is ", ("NAME", f), ", I moved house and need to update my address."],
        ["My husband ", ("NAME", f2), " cannot log in to the app since the update."],
        ["Please send the statement to ", ("EMAIL", email(f, last)), ". Thanks, ", ("NAME", f)],
        ["Reference ", bad_card(), " is the order id from the shop, the refund is still pending."],
        ["I want to move my savings to ", ("IBAN", make_iban()), " before the end of the month."],
        ["The IBAN they gave me, ", bad_iban(), ", is rejected by your app as invalid."],
        ["acct ", ("ACCOUNT", account()), " is locked after three wrong PINs, please help"],
        ["Mr. ", ("NAME", last), " from your branch promised a call back on ", ("PHONE", phone()), "."],
        ["Ms ", ("NAME", full), " requested a chargeback for the transaction on 12 March."],
        ["my name is ", ("NAME", f.lower() + " " + last.lower()), " and nobody answers the chat"],
        ["email me: ", ("EMAIL", email(f, last).replace("@", " at ").replace(".", " dot ")), " please"],
        ["Call ", ("PHONE", phone()), " or ", ("PHONE", phone()), " if the first line is busy."],
        ["The app shows transaction ID 883920174 twice in my history."],
        ["Your advisor ", ("NAME", f2), " said the fee would be waived but it was not."],
        ["Card number ", ("CARD", card()), ", expiry 09/28, was stolen, block it now!"],
        ["New card arrived but the PIN letter did not. ", ("NAME", full), ", 14 Elm Road."],
        ["I was charged 3 times at 7:45pm for 19.99 each, ticket 55321."],
        ["Transfer of €400 to ", ("NAME", full2), " (", ("IBAN", make_iban()), ") is stuck in pending."],
        ["Policy number ", ("ACCOUNT", account()), " was cancelled without notice."],
        ["Can I change my direct debit date from the 1st to the 15th?"],
        ["Happy with the service overall, but the exchange rate was poor. Cheers, ", ("NAME", f)],
        ["Customer number ", ("ACCOUNT", account()), " - please close this account."],
        ["my phone is ", ("PHONE", phone()), " and my email ", ("EMAIL", email(f, last))],
        ["Grace period on the loan ended on May 3 and I was not told."],
        ["The branch on Victoria Street is always closed when I visit."],
        ["Agent ", ("NAME", f2), " was very helpful, thank you!"],
        ["Please refund card ", ("CARD", card()), " and account ", ("ACCOUNT", account()), "."],
        [("NAME", full), " here - I need a new card urgently, the old one is damaged."],
        ["The 16-digit number on the voucher, 1234 5678 9012 3456, does not work."],
    ]
    return options


def render(parts: list[object]) -> dict[str, object]:
    text = ""
    spans = []
    for part in parts:
        if isinstance(part, tuple):
            kind, value = part
            spans.append({"start": len(text), "end": len(text) + len(value), "type": kind})
            text += value
        else:
            text += str(part)
    return {"text": text, "spans": spans}


def main() -> None:
    rows = []
    n_templates = len(templates())
    for i in range(260):
        parts = templates()[i % n_templates]
        rows.append(render(parts))
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} examples to {OUT}")


if __name__ == "__main__":
    main()

"""Which offsets of the scored topic the alert engine has already counted, kept in its state table.

faust-streaming (0.15) delivers records fetched while a restart or rebalance is still recovering the state table,
then seeks back to the committed offsets and delivers them again; in a narrower race it skips a record it had
fetched and later commits past it (faust-streaming issues #502 and #596). For a counting job both break the numbers:
a document counted twice inflates a window, a skipped one can keep a window below its threshold.

The ledger keeps, per partition, the next offset to count, in the same changelog-backed table as the windows (so a
restart restores it together with the counts it describes). For each delivered record the engine asks
:meth:`OffsetLedger.admit`:

- ``first``: no mark for this partition yet (a new engine): count it;
- ``next``: the expected offset: count it;
- ``duplicate``: below the mark, already counted: skip it (redelivery after a rebalance);
- ``gap``: above the mark: the records in between were not delivered; the engine reads them straight from the
  partition and counts them first, in order;
- ``jump``: above the mark by more than ``max_repair``: taken as a deliberate offset reset (an operator skipping a
  backlog), not repaired, logged.

The mark moves after a record's window updates (:meth:`OffsetLedger.done`), so a crash in between repeats a record
(at-least-once, as without the ledger) and never loses one.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

PREFIX = "o|"

Kind = Literal["first", "next", "duplicate", "gap", "jump"]


@dataclass(frozen=True)
class Admission:
    kind: Kind
    offset: int
    expected: int | None = None
    """The next offset the ledger expected (None for ``first``)."""

    @property
    def missing(self) -> range:
        """Offsets not delivered before this record (empty unless ``gap``)."""
        if self.kind != "gap" or self.expected is None:
            return range(0)
        return range(self.expected, self.offset)


class OffsetLedger:
    """Per-partition next offset to count, in ``state`` under ``o|<topic>|<partition>``."""

    def __init__(self, state: MutableMapping[str, Any], *, max_repair: int) -> None:
        if max_repair < 0:
            raise ValueError("max_repair must be >= 0")
        self.state = state
        self.max_repair = max_repair

    @staticmethod
    def key(topic: str, partition: int) -> str:
        return f"{PREFIX}{topic}|{partition}"

    def expected(self, topic: str, partition: int) -> int | None:
        value = self.state.get(self.key(topic, partition))
        return int(value) if value is not None else None

    def admit(self, topic: str, partition: int, offset: int) -> Admission:
        expected = self.expected(topic, partition)
        if expected is None:
            kind: Kind = "first"
        elif offset < expected:
            kind = "duplicate"
        elif offset == expected:
            kind = "next"
        elif offset - expected > self.max_repair:
            kind = "jump"
        else:
            kind = "gap"
        return Admission(kind, offset, expected)

    def done(self, topic: str, partition: int, offset: int) -> None:
        """``offset`` is counted: the mark moves past it (never backwards)."""
        expected = self.expected(topic, partition)
        if expected is None or offset + 1 > expected:
            self.state[self.key(topic, partition)] = offset + 1

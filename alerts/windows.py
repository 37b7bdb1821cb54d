"""Event-time windows, pure: durations, window assignment, and the open-window bookkeeping.

A window is ``[start, start + size)``. Tumbling windows have ``step == size``; hopping windows have a smaller
``step`` (``size`` must be a whole multiple of it), so an event lands in ``size / step`` windows. Window starts are
aligned to the Unix epoch, which makes them identical across processes and replays: that is what lets an alert id
be ``rule + group + window start``.

Nothing here knows about Kafka or faust; :class:`alerts.rules.Evaluator` drives these functions and keeps its
state in any ``MutableMapping`` (a dict in unit tests, a faust Table in the stream job).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """``"15m"`` -> 15 minutes. Units: s, m, h, d. Zero and negative durations are refused."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: expected a number and a unit (s, m, h, d), e.g. '15m'")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return timedelta(seconds=seconds)


def as_utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def window_starts(when: datetime, size: timedelta, step: timedelta) -> list[datetime]:
    """Starts of every window ``[s, s + size)`` with ``s`` on the ``step`` grid that contains ``when``, oldest first."""
    if step <= timedelta(0) or size <= timedelta(0):
        raise ValueError("window size and step must be positive")
    if size % step:
        raise ValueError("window size must be a whole multiple of the hop")
    offset = (as_utc(when) - _EPOCH) // step  # index of the newest window start at or before `when`
    newest = _EPOCH + offset * step
    count = size // step
    return [newest - i * step for i in range(count - 1, -1, -1)]


@dataclass
class WindowAgg:
    """Running aggregates of one rule + group + window (JSON-serialisable for a faust Table)."""

    count: int = 0
    negative: int = 0
    risk_sum: float = 0.0
    samples: list[str] = field(default_factory=list)
    fired: bool = False

    MAX_SAMPLES = 20

    def add(self, doc_id: str, *, negative: bool, risk: float) -> None:
        self.count += 1
        self.negative += int(negative)
        self.risk_sum += risk
        if len(self.samples) < self.MAX_SAMPLES and doc_id not in self.samples:
            self.samples.append(doc_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "negative": self.negative,
            "risk_sum": self.risk_sum,
            "samples": list(self.samples),
            "fired": self.fired,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowAgg:
        return cls(
            count=int(data["count"]),
            negative=int(data["negative"]),
            risk_sum=float(data["risk_sum"]),
            samples=list(data.get("samples", [])),
            fired=bool(data.get("fired", False)),
        )


def is_silenced(last_fired_start: datetime | None, window_start: datetime, silence: timedelta) -> bool:
    """True when the same rule + group fired for a window starting less than ``silence`` before this one.

    Silences run on event time (window starts), not on the wall clock, so replaying a day of documents fires
    exactly the alerts the live run fired.
    """
    if last_fired_start is None:
        return False
    return last_fired_start <= window_start < last_fired_start + silence

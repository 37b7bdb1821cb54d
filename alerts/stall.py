"""Noticing a stream that stopped delivering records.

faust-streaming (0.15) can come out of a start or a rebalance with its stream delivering nothing: the worker is
"ready", the partitions are assigned, records wait on them, and the agent never sees one. Nothing fails and
nothing is logged, so the engine would look healthy while no alert can fire. :class:`StallWatch` compares, per
partition, the offset the engine counts next (its offset ledger) with the partition's end offset: a partition
with records past the mark whose mark has not moved for ``timeout`` seconds is stalled.

What the engine logged at such stalls: aiokafka's position on the partition was already at its end, nothing was
waiting for an acknowledgement, and the agent had received none of the records. They were fetched and lost on the
way to the agent. So the engine first seeks the partition back to the mark (the records are fetched again; the
ledger skips any already counted), and if the same partition stalls again at the same mark it exits with code 75
for its supervisor to restart it; the ledger in the state table makes the restart count every record once.
"""

from __future__ import annotations

from dataclasses import dataclass

Partition = tuple[str, int]


@dataclass(frozen=True)
class Stall:
    topic: str
    partition: int
    mark: int
    """The next offset the engine would count."""
    end: int
    """The partition's end offset (one past its last record)."""
    seconds: float
    """How long the mark has stayed where it is with records after it."""

    def describe(self) -> str:
        return (
            f"{self.topic}[{self.partition}]: {self.end - self.mark} record(s) from offset {self.mark} waiting, "
            f"none delivered for {self.seconds:.0f}s"
        )


def next_to_count(ledger: int | None, committed: int | None, first: int, reset: str) -> int | None:
    """The offset from which records are waiting to be counted on one partition, for the watch.

    The later of the ledger's mark and the group's committed offset: records below the committed offset are counted,
    repaired by the gap check, or skipped on purpose (an operator's offset reset past a backlog, which a seek back
    must not undo). With neither (a new engine), where the stream starts: the partition's first offset for the
    ``earliest`` reset; unknown (None) for ``latest``, which waits for new records only.
    """
    known = [offset for offset in (ledger, committed) if offset is not None]
    if known:
        return max(known)
    return first if reset == "earliest" else None


class StallWatch:
    """Per partition: since when has its mark stood still with records after it?"""

    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.timeout = timeout
        self._since: dict[Partition, tuple[int, float]] = {}
        self._delivered: int | None = None

    def reset(self) -> None:
        """Forget every observation (a rebalance or a restore is under way: nothing is expected to move)."""
        self._since.clear()

    def observe(
        self, now: float, ends: dict[Partition, int], marks: dict[Partition, int | None], delivered: int
    ) -> list[Stall]:
        """Record one look at the partitions and return those stalled for ``timeout`` seconds or more.

        ``ends``: end offsets of the assigned partitions; ``marks``: the next offset to count (None when unknown);
        ``delivered``: how many records the stream has handed over so far. A delivery since the last look is
        progress even when no mark moved (records already counted, skipped after an offset reset backwards), so
        it restarts every clock.
        """
        if delivered != self._delivered:
            self._delivered = delivered
            self._since.clear()
        stalls: list[Stall] = []
        for tp in list(self._since):
            if tp not in ends:  # no longer assigned
                del self._since[tp]
        for tp, end in sorted(ends.items()):
            mark = marks.get(tp)
            if mark is None or end <= mark:
                self._since.pop(tp, None)  # caught up (or nothing known to wait for)
                continue
            seen = self._since.get(tp)
            if seen is None or seen[0] != mark:  # newly behind, or moved since the last look
                self._since[tp] = (mark, now)
                continue
            waited = now - seen[1]
            if waited >= self.timeout:
                stalls.append(Stall(tp[0], tp[1], mark, end, waited))
        return stalls

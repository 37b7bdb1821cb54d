"""The offset ledger: redelivered records are counted once, skipped ones are found, resets are honoured."""

from __future__ import annotations

import pytest

from alerts.ledger import OffsetLedger


def test_a_new_partition_starts_wherever_the_stream_starts() -> None:
    ledger = OffsetLedger({}, max_repair=100)
    assert ledger.admit("scored", 0, 41).kind == "first"
    ledger.done("scored", 0, 41)
    assert ledger.expected("scored", 0) == 42
    assert ledger.admit("scored", 1, 0).kind == "first"  # partitions are independent


def test_redelivery_after_a_rebalance_is_skipped() -> None:
    state: dict[str, object] = {}
    ledger = OffsetLedger(state, max_repair=100)
    for offset in range(4):
        assert ledger.admit("scored", 0, offset).kind in {"first", "next"}
        ledger.done("scored", 0, offset)
    # the restarted engine restores the same table and is handed offsets 2 and 3 again
    again = OffsetLedger(dict(state), max_repair=100)
    assert [again.admit("scored", 0, o).kind for o in (2, 3)] == ["duplicate", "duplicate"]
    assert again.admit("scored", 0, 4).kind == "next"


def test_a_skipped_record_is_reported_as_missing_offsets() -> None:
    ledger = OffsetLedger({}, max_repair=100)
    ledger.done("scored", 0, 1)
    verdict = ledger.admit("scored", 0, 5)
    assert verdict.kind == "gap" and list(verdict.missing) == [2, 3, 4]
    for offset in verdict.missing:  # what the engine does: count the read-back records first, in order
        ledger.done("scored", 0, offset)
    assert ledger.admit("scored", 0, 5).kind == "next"


def test_a_jump_beyond_the_repair_limit_is_an_offset_reset() -> None:
    ledger = OffsetLedger({}, max_repair=10)
    ledger.done("scored", 0, 0)
    verdict = ledger.admit("scored", 0, 12)
    assert verdict.kind == "jump" and list(verdict.missing) == []
    assert ledger.admit("scored", 0, 11).kind == "gap"  # exactly at the limit is still repaired
    assert OffsetLedger({"o|scored|0": 1}, max_repair=0).admit("scored", 0, 2).kind == "jump"


def test_the_mark_never_moves_back_and_lives_beside_the_windows() -> None:
    state: dict[str, object] = {"w|rule|0|{}": {"count": 2}}
    ledger = OffsetLedger(state, max_repair=100)
    ledger.done("scored", 0, 9)
    ledger.done("scored", 0, 3)
    assert ledger.expected("scored", 0) == 10
    assert set(state) == {"w|rule|0|{}", "o|scored|0"}  # the evaluator only reads its own w|/s| keys
    with pytest.raises(ValueError, match="max_repair"):
        OffsetLedger({}, max_repair=-1)

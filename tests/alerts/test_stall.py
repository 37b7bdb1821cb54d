"""The stall watch: records waiting on a partition whose mark does not move, for long enough, are a stall."""

from __future__ import annotations

import pytest

from alerts.stall import StallWatch, next_to_count

P0 = ("scored", 0)
P1 = ("scored", 1)


def test_records_waiting_behind_a_mark_that_never_moves_are_a_stall_after_the_timeout() -> None:
    watch = StallWatch(30)
    assert watch.observe(0, {P0: 10}, {P0: 7}, 0) == []  # behind: the clock starts
    assert watch.observe(29, {P0: 12}, {P0: 7}, 0) == []  # more records arrive, still under the timeout
    (stall,) = watch.observe(31, {P0: 12}, {P0: 7}, 0)
    assert (stall.topic, stall.partition, stall.mark, stall.end, stall.seconds) == ("scored", 0, 7, 12, 31)
    assert stall.describe() == "scored[0]: 5 record(s) from offset 7 waiting, none delivered for 31s"


def test_a_mark_that_moves_restarts_the_clock() -> None:
    watch = StallWatch(30)
    watch.observe(0, {P0: 100}, {P0: 1}, 0)
    assert watch.observe(25, {P0: 100}, {P0: 2}, 0) == []  # slow, but delivering
    assert watch.observe(50, {P0: 100}, {P0: 2}, 0) == []  # 25 s at this mark
    assert len(watch.observe(56, {P0: 100}, {P0: 2}, 0)) == 1


def test_a_caught_up_or_unknown_partition_is_never_stalled() -> None:
    watch = StallWatch(10)
    watch.observe(0, {P0: 5, P1: 9}, {P0: 5, P1: None}, 0)
    assert watch.observe(100, {P0: 5, P1: 9}, {P0: 5, P1: None}, 0) == []
    # caught up in between: the clock starts again when it falls behind
    watch.observe(0, {P0: 6}, {P0: 5}, 0)
    watch.observe(5, {P0: 6}, {P0: 6}, 0)
    assert watch.observe(12, {P0: 7}, {P0: 6}, 0) == []


def test_reset_and_reassignment_forget_what_was_seen() -> None:
    watch = StallWatch(10)
    watch.observe(0, {P0: 5, P1: 5}, {P0: 1, P1: 1}, 0)
    watch.reset()  # a rebalance: nothing is expected to move meanwhile
    assert watch.observe(11, {P0: 5, P1: 5}, {P0: 1, P1: 1}, 0) == []
    watch.observe(12, {P1: 5}, {P1: 1}, 0)  # P0 went to another engine
    assert [s.partition for s in watch.observe(22, {P0: 5, P1: 5}, {P0: 1, P1: 1}, 0)] == [1]


def test_records_delivered_without_moving_a_mark_are_progress() -> None:
    """After an offset reset backwards the stream hands over records already counted: the marks stay, but the
    stream is alive."""
    watch = StallWatch(10)
    watch.observe(0, {P0: 100}, {P0: 50}, 1000)
    assert watch.observe(8, {P0: 100}, {P0: 50}, 1500) == []
    assert watch.observe(16, {P0: 100}, {P0: 50}, 2000) == []
    assert watch.observe(25, {P0: 100}, {P0: 50}, 2000) == []  # 9 s without a delivery
    assert len(watch.observe(27, {P0: 100}, {P0: 50}, 2000)) == 1


def test_the_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        StallWatch(0)


def test_records_waiting_start_at_the_later_of_the_ledger_and_the_committed_offset() -> None:
    assert next_to_count(7, 5, 0, "earliest") == 7  # the group commits a little behind what was counted
    assert next_to_count(7, 9, 0, "earliest") == 9  # a gap below 9 is the gap check's
    # an operator moved the group past a backlog: not waiting records, and a seek back must not undo the reset
    assert next_to_count(100, 50_000, 0, "earliest") == 50_000
    assert next_to_count(None, 12, 0, "latest") == 12  # a new engine resumes a group's committed offset
    assert next_to_count(None, None, 3, "earliest") == 3  # a new group: from the partition's first record
    assert next_to_count(None, None, 3, "latest") is None  # a new group: new records only, nothing known to wait


def test_a_consumer_whose_internals_changed_is_reported_not_fatal() -> None:
    """The stall log reads faust's and aiokafka's internals; after an upgrade that renames them the watch still
    logs the stall and acts on it, with the state marked unavailable."""
    from types import SimpleNamespace

    from alerts.engine import consumer_state

    assert consumer_state(SimpleNamespace()).startswith("unavailable (AttributeError(")  # type: ignore[arg-type]

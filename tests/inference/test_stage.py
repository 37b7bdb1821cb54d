"""The worker's write stage: order, retries, cancellation and closing (pure logic; the sinks are functions here).

The worker commits what ``take_done`` returns, in that order. So these rules are what keeps a commit from
covering a document that is not in Elasticsearch: a batch is handed back only once written, never ahead of an
earlier one, and never after it was cancelled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from inference.sinks import SinkUnavailableError
from inference.stage import StageClosedError, WriteStage


def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Sink:
    """Records every attempt; fails while ``down`` is set; blocks on ``gate`` when one is given."""

    def __init__(self) -> None:
        self.attempts: list[int] = []
        self.written: list[int] = []
        self.down = threading.Event()
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def write(self, batch: int) -> None:
        self.attempts.append(batch)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.down.is_set():
            raise SinkUnavailableError("elasticsearch unreachable")
        self.written.append(batch)


def collect(stage: WriteStage[int], n: int) -> list[int]:
    done: list[int] = []

    def enough() -> bool:
        done.extend(stage.take_done())
        return len(done) >= n

    until(enough)
    return done


def test_batches_come_back_written_and_in_submission_order() -> None:
    sink = Sink()
    stage: WriteStage[int] = WriteStage(sink.write, backoff_s=lambda n: 0.01)
    for batch in range(20):
        stage.submit(batch)
    assert collect(stage, 20) == list(range(20))
    assert sink.written == list(range(20))
    assert stage.in_flight == 0 and not stage.stalled
    assert stage.close(5)


def test_a_failing_batch_holds_back_every_later_one_until_it_goes_through() -> None:
    sink = Sink()
    sink.down.set()
    stage: WriteStage[int] = WriteStage(sink.write, backoff_s=lambda n: 0.01)
    for batch in (1, 2, 3):
        stage.submit(batch)
    until(lambda: sink.attempts.count(1) >= 3)  # retried with backoff
    assert stage.stalled and stage.head() == 1
    assert set(sink.attempts) == {1} and stage.take_done() == []  # 2 and 3 never overtake it
    assert stage.in_flight == 3
    sink.down.clear()
    assert collect(stage, 3) == [1, 2, 3]
    assert not stage.stalled
    assert stage.close(5)


def test_cancel_drops_what_is_queued_and_written_and_discards_a_write_in_progress() -> None:
    sink = Sink()
    stage: WriteStage[int] = WriteStage(sink.write, backoff_s=lambda n: 0.01)
    stage.submit(1)
    assert collect(stage, 1) == [1]
    stage.submit(2)
    until(lambda: 2 in sink.written)  # written, not yet taken back: its commit has not happened
    sink.gate = threading.Event()
    sink.entered.clear()
    stage.submit(3)
    stage.submit(4)
    assert sink.entered.wait(5)  # 3 is being written
    assert sorted(stage.cancel()) == [2, 3, 4]  # every uncommitted batch, for the rewind
    sink.gate.set()
    until(lambda: 3 in sink.written)
    time.sleep(0.05)
    assert stage.take_done() == [] and stage.in_flight == 0  # 3 finished but is not handed back
    assert 4 not in sink.attempts
    stage.submit(5)  # the stage goes on after a cancel
    assert collect(stage, 1) == [5]
    assert stage.close(5)


def test_cancel_ends_a_stall() -> None:
    sink = Sink()
    sink.down.set()
    stage: WriteStage[int] = WriteStage(sink.write, backoff_s=lambda n: 60.0)  # a long backoff, cut short
    stage.submit(1)
    until(lambda: stage.stalled)
    assert stage.cancel() == [1]
    assert not stage.stalled and stage.in_flight == 0
    sink.down.clear()
    stage.submit(2)
    assert collect(stage, 1) == [2]
    assert stage.close(5)


def test_close_writes_what_it_can_and_abandons_the_rest_at_the_first_failure() -> None:
    sink = Sink()
    sink.down.set()
    stage: WriteStage[int] = WriteStage(sink.write, backoff_s=lambda n: 60.0)
    for batch in (1, 2):
        stage.submit(batch)
    until(lambda: stage.stalled)
    started = time.monotonic()
    assert stage.close(10)  # one more attempt at the head, no waiting out the backoff
    assert time.monotonic() - started < 5
    assert sink.attempts == [1, 1] and stage.take_done() == []  # 2 was never written ahead of 1
    with pytest.raises(StageClosedError):
        stage.submit(3)

    healthy = Sink()
    stage = WriteStage(healthy.write, backoff_s=lambda n: 0.01)
    healthy.gate = threading.Event()
    for batch in (1, 2, 3):
        stage.submit(batch)
    threading.Timer(0.1, healthy.gate.set).start()
    assert stage.close(10)
    assert stage.take_done() == [1, 2, 3]  # queued batches are written before the thread ends


def test_an_unexpected_error_stops_the_stage_and_surfaces_on_the_caller() -> None:
    def broken(batch: int) -> None:
        raise KeyError("a bug, not an outage")

    stage: WriteStage[int] = WriteStage(broken, backoff_s=lambda n: 0.01)
    stage.submit(1)
    until(lambda: not stage._thread.is_alive())
    with pytest.raises(RuntimeError, match="unexpected error") as info:
        stage.check()
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(StageClosedError):
        stage.submit(2)
    assert stage.head() == 1  # not dropped: uncommitted, so redelivered after the restart


def test_wait_returns_at_once_when_a_written_batch_already_awaits_its_commit() -> None:
    """The consumer thread checks, then waits: a write that ended in between must not cost it the whole timeout."""
    sink = Sink()
    stage: WriteStage[int] = WriteStage(sink.write, backoff_s=lambda n: 0.01)
    stage.submit(1)
    until(lambda: 1 in sink.written)
    started = time.monotonic()
    stage.wait(30)
    assert time.monotonic() - started < 10  # a missed wake-up would wait out the 30 s
    assert stage.take_done() == [1]
    assert stage.close(5)

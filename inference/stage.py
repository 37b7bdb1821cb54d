"""The worker's write stage: scored batches go to Elasticsearch and Kafka on a thread of their own, in order.

The consumer thread parses and scores micro-batches and hands each one to :class:`WriteStage`; one writer thread
writes them strictly in submission order (the head of the queue blocks those behind it) and hands each written
batch back through :meth:`WriteStage.take_done`. The consumer thread alone commits offsets (a Kafka consumer is
not thread-safe), in the order the batches were written. A batch behind one that failed is never written before
it, so a commit can never cover an offset that is not yet in Elasticsearch.

A write that fails with :class:`~inference.sinks.SinkUnavailableError` leaves the batch at the head: the stage
reports itself ``stalled`` and retries it with backoff until it goes through, the batches are cancelled (a
rebalance took their partitions) or the stage is closed. Closing gives every batch still queued one more attempt
and abandons the rest at the first failure: uncommitted, they are redelivered to whoever owns their partitions next.

The stage knows nothing about Kafka or Elasticsearch: ``write`` does the work, so the ordering, retry and
cancellation rules are tested on their own (tests/inference/test_stage.py).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Generic, TypeVar

from inference.sinks import SinkUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")


class StageClosedError(RuntimeError):
    """A batch was submitted to a stage that is closing or failed."""


class WriteStage(Generic[T]):
    """Writes submitted batches one at a time, in order, on a daemon thread.

    ``write(batch)`` raises :class:`SinkUnavailableError` for a failure that may heal (the batch is retried after
    ``backoff_s(failures)`` seconds); any other exception is a bug: the stage stops and :meth:`check` re-raises it
    on the consumer thread.
    """

    def __init__(
        self, write: Callable[[T], None], *, backoff_s: Callable[[int], float], name: str = "riskstream-writer"
    ) -> None:
        self._write = write
        self._backoff_s = backoff_s
        self._cond = threading.Condition()
        self._pending: deque[T] = deque()  # submitted, not yet written; the head is the one being written
        self._done: deque[T] = deque()  # written, not yet taken by the consumer thread
        self._failures = 0  # consecutive failed attempts at the head
        self._generation = 0  # bumped by cancel(): a write that started before is discarded when it ends
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- the consumer thread's side ----------------------------------------------------------------------------

    def submit(self, batch: T) -> None:
        with self._cond:
            if self._closing or self._error is not None:
                raise StageClosedError("the write stage is closed")
            self._pending.append(batch)
            self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        """Batches submitted and not yet taken back: queued, being written, or written and awaiting their commit."""
        with self._cond:
            return len(self._pending) + len(self._done)

    @property
    def stalled(self) -> bool:
        """True while the head batch has failed at least once and is waiting for its next attempt."""
        with self._cond:
            return self._failures > 0 and bool(self._pending)

    def head(self) -> T | None:
        with self._cond:
            return self._pending[0] if self._pending else None

    def take_done(self) -> list[T]:
        """The batches written since the last call, in submission order (commit them in that order)."""
        with self._cond:
            done = list(self._done)
            self._done.clear()
            return done

    def wait(self, timeout_s: float) -> None:
        """Block until a written batch awaits its commit, the head is failing, the writer stopped, or ``timeout_s``
        passes. Returns at once if one of these already holds (a write that ended just before is not missed)."""
        with self._cond:
            self._cond.wait_for(self._worth_waking, timeout_s)

    def cancel(self) -> list[T]:
        """Drop every batch not yet taken back, written or not, and return them (their offsets must be rewound).

        A write in progress finishes (Elasticsearch overwrites by ``_id``; the topics are at-least-once) and is
        then discarded: it will not come back through :meth:`take_done`."""
        with self._cond:
            dropped = [*self._done, *self._pending]
            self._done.clear()
            self._pending.clear()
            self._failures = 0
            self._generation += 1
            self._cond.notify_all()
            return dropped

    def close(self, timeout_s: float) -> bool:
        """Stop after one more attempt at each queued batch (none after the first failure); True if the thread ended
        within ``timeout_s``. Batches written meanwhile can still be taken with :meth:`take_done`."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def check(self) -> None:
        """Re-raise, on the caller's thread, an unexpected error that stopped the writer."""
        if self._error is not None:
            raise RuntimeError("the write stage stopped on an unexpected error") from self._error

    # ---- the writer thread -------------------------------------------------------------------------------------

    def _worth_waking(self) -> bool:
        return bool(self._done) or self._failures > 0 or self._error is not None or not self._pending

    def _interrupted(self, generation: int) -> bool:
        """Ends a backoff early: the stage is closing, or the batch was cancelled."""
        return self._closing or generation != self._generation

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return  # closing, nothing left
                batch = self._pending[0]
                generation = self._generation
            failure: SinkUnavailableError | None = None
            try:
                self._write(batch)
            except SinkUnavailableError as exc:
                failure = exc
            except BaseException as exc:
                log.exception("the write stage stopped on an unexpected error")
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                if generation != self._generation:
                    continue  # cancelled while being written: its offsets are rewound, nothing to hand back
                if failure is None:
                    self._pending.popleft()
                    self._done.append(batch)
                    self._failures = 0
                    self._cond.notify_all()
                    continue
                self._failures += 1
                self._cond.notify_all()
                if self._closing:
                    log.warning(
                        "stopping with %d unwritten batch(es) (%s); they will be redelivered",
                        len(self._pending),
                        failure,
                    )
                    self._pending.clear()
                    return
                delay = self._backoff_s(self._failures)
                log.warning("write attempt %d failed (%s); retrying in %.1f s", self._failures, failure, delay)
                self._cond.wait_for(partial(self._interrupted, generation), timeout=delay)

"""Per-host pacing: at most one request in flight per host, and a minimum interval between two requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class HostThrottle:
    def __init__(
        self,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._next_at: dict[str, float] = {}
        self._delays: dict[str, float] = {}

    def set_delay(self, host: str, delay_s: float) -> None:
        """A host-specific interval (robots.txt Crawl-delay); the larger of it and the default applies."""
        self._delays[host] = delay_s

    def defer(self, host: str, seconds: float) -> None:
        """Do not contact ``host`` for ``seconds`` (Retry-After)."""
        with self._guard:
            self._next_at[host] = max(self._next_at.get(host, 0.0), self._clock() + seconds)

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold the host's single request slot, after waiting for its pacing interval."""
        with self._guard:
            lock = self._locks.setdefault(host, threading.Lock())
        with lock:
            wait = self._next_at.get(host, 0.0) - self._clock()
            if wait > 0:
                self._sleep(wait)
            try:
                yield
            finally:
                interval = max(self.interval_s, self._delays.get(host, 0.0))
                with self._guard:
                    self._next_at[host] = max(self._next_at.get(host, 0.0), self._clock() + interval)

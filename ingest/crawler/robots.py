"""robots.txt per RFC 9309, parsed by Protego (an RFC 9309 parser: longest match, Allow wins ties, wildcards).

Fetch outcome -> rules (RFC 9309 section 2.3.1):
- 2xx: the file's rules; 3xx: followed (up to 5 hops, by the fetcher);
- 4xx ("unavailable"): allow everything;
- 5xx or unreachable (network error, timeout): disallow everything.
A result is cached in memory and in ``crawl_state`` for at most ``robots_cache_s`` (<= 24 h). An unreachable
result is cached for this run only, so the next run tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from protego import Protego

from ingest.crawler.state import CrawlState, UrlState

log = logging.getLogger(__name__)

MAX_ROBOTS_BYTES = 500 * 1024  # RFC 9309: parse at least 500 KiB


@dataclass(frozen=True)
class RobotsPolicy:
    status: int  # HTTP status, 0 when unreachable
    parser: Protego | None
    fetched_at: datetime

    @property
    def mode(self) -> str:
        if self.parser is not None:
            return "rules"
        return "allow_all" if 400 <= self.status < 500 else "disallow_all"

    def allowed(self, url: str, agent: str) -> bool:
        if self.parser is not None:
            return bool(self.parser.can_fetch(url, agent))
        return 400 <= self.status < 500

    def crawl_delay(self, agent: str) -> float | None:
        if self.parser is None:
            return None
        delay = self.parser.crawl_delay(agent)
        return float(delay) if delay is not None else None


def robots_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/robots.txt"


def policy_from(status: int, body: bytes | None, fetched_at: datetime) -> RobotsPolicy:
    if 200 <= status < 300:
        text = (body or b"")[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace")
        return RobotsPolicy(status, Protego.parse(text), fetched_at)
    return RobotsPolicy(status, None, fetched_at)


FetchRobots = Callable[[str], tuple[int, bytes | None]]


class RobotsCache:
    def __init__(self, state: CrawlState | None, fetch: FetchRobots, *, max_age: timedelta) -> None:
        self.state = state
        self.fetch = fetch
        self.max_age = max_age
        self._memory: dict[str, RobotsPolicy] = {}

    def _fresh(self, policy: RobotsPolicy) -> bool:
        return datetime.now(tz=UTC) - policy.fetched_at < self.max_age

    def policy(self, url: str) -> RobotsPolicy:
        key = robots_url(url)
        cached = self._memory.get(key)
        if cached is not None and self._fresh(cached):
            return cached
        if self.state is not None:
            stored = self.state.get(key)
            if stored is not None and stored.status is not None and stored.fetched_at is not None:
                policy = policy_from(stored.status, stored.body, stored.fetched_at)
                if self._fresh(policy):
                    self._memory[key] = policy
                    return policy
        status, body = self.fetch(key)
        now = datetime.now(tz=UTC)
        policy = policy_from(status, body, now)
        log.info("robots.txt %s -> status %s, %s", key, status or "unreachable", policy.mode)
        self._memory[key] = policy
        if self.state is not None and status:
            self.state.put(UrlState(key, status=status, body=body if 200 <= status < 300 else None, fetched_at=now))
        return policy

"""HTTP fetching with the politeness and safety rules of the crawler.

Every request goes through :meth:`Fetcher.get`, which for each redirect hop (``follow_redirects=False`` and a
manual loop) checks: scheme http/https, host in the allow list (SSRF guard), robots.txt allows the URL; then waits
for the host's slot (one request in flight per host, per-host interval or Crawl-delay, any Retry-After), sends an
honest User-Agent and the stored conditional-GET validators, streams the body and aborts beyond the size limit.
Timeouts, connection errors, 5xx, 429 and 503 are retried with exponential backoff (tenacity); a Retry-After is
honoured (waited for when short, recorded in ``crawl_state`` and the URL skipped when long).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from ingest.crawler.politeness import HostThrottle
from ingest.crawler.robots import RobotsCache
from ingest.crawler.state import CrawlState, UrlState
from ingest.settings import IngestSettings

log = logging.getLogger(__name__)

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
RETRY_CODES = frozenset({429, 500, 502, 503, 504})


class FetchError(Exception):
    """A URL could not be fetched; ``reason`` is machine-readable (disallowed, too_large, timeout, http_404...)."""

    def __init__(self, url: str, reason: str, detail: str = "") -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}" + (f" ({detail})" if detail else ""))


class _RetryableError(Exception):
    def __init__(self, reason: str, delay: float | None = None, status: int | None = None) -> None:
        self.reason = reason
        self.delay = delay
        self.status = status
        super().__init__(reason)


@dataclass(frozen=True)
class FetchResult:
    url: str  # the URL asked for
    final_url: str  # after redirects
    status: int
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    content: bytes = b""

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(tz=UTC))).total_seconds())


class Fetcher:
    def __init__(
        self,
        settings: IngestSettings,
        *,
        allowed_hosts: set[str],
        state: CrawlState | None = None,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.state = state
        self._sleep = sleep
        self.client = client or httpx.Client(
            follow_redirects=False,
            trust_env=False,  # never route through an environment proxy (SSRF guard, loopback tests)
            timeout=httpx.Timeout(
                settings.read_timeout_s, connect=settings.connect_timeout_s, pool=settings.read_timeout_s
            ),
            headers={"User-Agent": settings.user_agent, "Accept-Encoding": "gzip, deflate"},
        )
        self.throttle = HostThrottle(settings.per_host_interval_s, sleep=sleep)
        self.robots = RobotsCache(state, self._fetch_robots, max_age=timedelta(seconds=settings.robots_cache_s))
        self.requests = 0  # network requests sent (for logs and tests)

    def close(self) -> None:
        self.client.close()

    # ---- checks ---------------------------------------------------------------------------------------------

    def check_target(self, url: str) -> str | None:
        """Why ``url`` may not be contacted (scheme, host), or None."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return "scheme_not_allowed"
        host = (parts.hostname or "").lower()
        if not host or host not in self.allowed_hosts:
            return "host_not_allowed"
        return None

    def allowed_by_robots(self, url: str) -> bool:
        policy = self.robots.policy(url)
        host = urlsplit(url).netloc.lower()
        delay = policy.crawl_delay(self.settings.robots_agent)
        if delay is not None:
            if delay > self.settings.max_crawl_delay_s:
                log.warning(
                    "%s asks for Crawl-delay %.0fs; capped at %.0fs", host, delay, self.settings.max_crawl_delay_s
                )
            self.throttle.set_delay(host, min(delay, self.settings.max_crawl_delay_s))
        return policy.allowed(url, self.settings.robots_agent)

    # ---- requests -------------------------------------------------------------------------------------------

    def _wait(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _RetryableError) and exc.delay is not None:
            return exc.delay
        backoff = self.settings.backoff_initial_s * (2 ** (retry_state.attempt_number - 1))
        return float(min(self.settings.backoff_max_s, backoff))

    def _once(self, url: str, headers: dict[str, str], *, truncate: bool = False) -> tuple[int, httpx.Headers, bytes]:
        """One request in the host's slot; the body is streamed and capped at ``max_response_bytes``."""
        host = urlsplit(url).netloc.lower()
        limit = self.settings.max_response_bytes
        with self.throttle.slot(host):
            self.requests += 1
            try:
                with self.client.stream("GET", url, headers=headers) as response:
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limit and not truncate:
                        raise FetchError(url, "too_large", f"Content-Length {declared} > {limit}")
                    chunks: list[bytes] = []
                    size = 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > limit:
                            if truncate:
                                chunks.append(chunk[: limit - (size - len(chunk))])
                                break
                            raise FetchError(url, "too_large", f"body exceeds {limit} bytes; transfer aborted")
                        chunks.append(chunk)
                    return response.status_code, response.headers, b"".join(chunks)
            except httpx.TimeoutException as exc:
                raise _RetryableError("timeout") from exc
            except (httpx.TransportError, httpx.DecodingError) as exc:
                raise _RetryableError(f"network_error: {type(exc).__name__}") from exc

    def _request(
        self, url: str, headers: dict[str, str], *, truncate: bool = False
    ) -> tuple[int, httpx.Headers, bytes]:
        """``_once`` with retries: timeouts, network errors, 5xx, 429/503 with Retry-After."""

        def attempt() -> tuple[int, httpx.Headers, bytes]:
            status, resp_headers, body = self._once(url, headers, truncate=truncate)
            if status in RETRY_CODES:
                delay = parse_retry_after(resp_headers.get("retry-after"))
                host = urlsplit(url).netloc.lower()
                if delay is not None and delay > self.settings.max_retry_after_s:
                    self._defer(url, delay)
                    raise FetchError(url, "retry_after_too_long", f"{status}, Retry-After {delay:.0f}s")
                if delay is not None:
                    log.info("%s answered %s, Retry-After %.1fs", url, status, delay)
                    self.throttle.defer(host, delay)
                raise _RetryableError(f"http_{status}", delay=delay, status=status)
            return status, resp_headers, body

        retrying = Retrying(
            stop=stop_after_attempt(self.settings.fetch_retries),
            wait=self._wait,
            retry=retry_if_exception_type(_RetryableError),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _RetryableError as exc:
            if exc.status is not None:
                raise FetchError(url, f"http_{exc.status}", "gave up after retries") from exc
            raise FetchError(url, exc.reason, "gave up after retries") from exc

    def _defer(self, url: str, seconds: float) -> None:
        if self.state is None:
            return
        previous = self.state.get(url) or UrlState(url)
        until = datetime.now(tz=UTC) + timedelta(seconds=seconds)
        self.state.put(
            UrlState(
                url, previous.etag, previous.last_modified, previous.status, previous.body, previous.fetched_at, until
            )
        )

    def _fetch_robots(self, url: str) -> tuple[int, bytes | None]:
        """(status, body) of a robots.txt, following up to 5 redirects; 0 when unreachable."""
        current = url
        for _ in range(6):
            if self.check_target(current) is not None:
                return 0, None
            try:
                status, headers, body = self._request(current, {}, truncate=True)
            except FetchError as exc:
                if exc.reason.startswith("http_"):
                    return int(exc.reason.removeprefix("http_")), None
                log.warning("robots.txt %s unreachable: %s", current, exc.reason)
                return 0, None
            if status in REDIRECT_CODES and headers.get("location"):
                current = urljoin(current, headers["location"])
                continue
            return status, body
        return 0, None

    def get(self, url: str, *, conditional: bool = False) -> FetchResult:
        """Fetch ``url`` following checked redirects; raises :class:`FetchError` with a reason."""
        stored = self.state.get(url) if self.state is not None else None
        if stored is not None and stored.retry_after is not None and stored.retry_after > datetime.now(tz=UTC):
            raise FetchError(url, "deferred", f"Retry-After until {stored.retry_after.isoformat()}")
        headers: dict[str, str] = {}
        if conditional and stored is not None:
            if stored.etag:
                headers["If-None-Match"] = stored.etag
            if stored.last_modified:
                headers["If-Modified-Since"] = stored.last_modified
        current = url
        for _hop in range(self.settings.max_redirects + 1):
            reason = self.check_target(current)
            if reason is not None:
                raise FetchError(url, reason, current)
            if urlsplit(current).path != "/robots.txt" and not self.allowed_by_robots(current):
                raise FetchError(url, "disallowed_by_robots", current)
            status, resp_headers, body = self._request(current, headers if current == url else {})
            if status in REDIRECT_CODES:
                location = resp_headers.get("location")
                if not location:
                    raise FetchError(url, "redirect_without_location")
                current = urljoin(current, location)
                continue
            if status == 304 or 200 <= status < 300:
                return FetchResult(url, current, status, resp_headers, body)
            raise FetchError(url, f"http_{status}")
        raise FetchError(url, "too_many_redirects")

    def remember(self, result: FetchResult) -> None:
        """Store the response's validators for the next conditional GET (call after processing succeeded)."""
        if self.state is None or result.not_modified:
            return
        etag = result.headers.get("etag")
        last_modified = result.headers.get("last-modified")
        self.state.put(UrlState(result.url, etag, last_modified, result.status, None, datetime.now(tz=UTC), None))

"""The crawler against a local site: robots.txt variants, conditional GET, 429, slow and huge responses,
truncated and mis-encoded feeds, redirects, syndicated copies."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ingest.crawler.crawl import Crawler
from ingest.crawler.fetch import Fetcher, FetchError, parse_retry_after
from ingest.crawler.state import CrawlState
from ingest.pipeline import Ingestor
from ingest.publisher import ListSink
from ingest.settings import IngestSettings
from riskstream.db import Database
from tests.ingest.site import OTHER_STORY, STORY, Route, Site, article_html, rss

ROBOTS = b"User-agent: *\nDisallow: /private/\n"
DATE = "Fri, 20 Nov 2026 07:30:00 GMT"


def make_fetcher(settings: IngestSettings, db: Database, sleeps: list[float] | None = None) -> Fetcher:
    record = sleeps if sleeps is not None else []
    return Fetcher(settings, allowed_hosts={"127.0.0.1"}, state=CrawlState(db), sleep=record.append)


@pytest.fixture
def fetcher(ingest_settings: IngestSettings, db: Database) -> Iterator[Fetcher]:
    f = make_fetcher(ingest_settings, db)
    yield f
    f.close()


def news_site(site: Site) -> None:
    site.routes["/robots.txt"] = Route(body=ROBOTS, headers={"Content-Type": "text/plain"})
    html = {"Content-Type": "text/html; charset=utf-8"}
    site.routes["/news/apple-warning"] = Route(body=article_html("Apple warns on China", STORY).encode(), headers=html)
    copy = "From our partners at Example Wire. " + STORY.replace("on Tuesday", "on Tuesday in New York")
    site.routes["/wire/apple-warning-copy"] = Route(body=article_html("Apple warns", copy).encode(), headers=html)
    site.routes["/news/hsbc-profit"] = Route(body=article_html("HSBC profit jumps", OTHER_STORY).encode(), headers=html)
    site.routes["/private/secret-story"] = Route(body=article_html("Secret", OTHER_STORY).encode(), headers=html)
    feed = rss(
        [
            ("Apple warns on China", site.url("/news/apple-warning?utm_source=rss"), "Fri, 20 Nov 2026 08:00:00 +0100"),
            ("Apple warns (wire)", site.url("/wire/apple-warning-copy"), "Fri, 20 Nov 2026 09:00:00 +0100"),
            ("HSBC profit jumps", site.url("/news/hsbc-profit"), "Fri, 20 Nov 2026 10:00:00 +0100"),
            ("Secret", site.url("/private/secret-story"), "Fri, 20 Nov 2026 11:00:00 +0100"),
        ]
    )
    site.routes["/feed.xml"] = Route(
        body=feed.encode(), headers={"Content-Type": "application/rss+xml"}, etag='"feed-v1"', last_modified=DATE
    )


def test_feed_crawl_is_polite_linked_and_conditional(
    site: Site, fetcher: Fetcher, ingestor: Ingestor, sink: ListSink
) -> None:
    news_site(site)
    crawler = Crawler(fetcher, ingestor)
    stats = crawler.crawl([site.url("/feed.xml")])

    assert site.requests_to("/private/secret-story") == []  # disallowed by robots.txt: never fetched
    assert stats.skipped["disallowed_by_robots"] == 1
    by_path = {d.url.split("127.0.0.1", 1)[1].split("/", 1)[1]: d for d in sink.docs if d.url}
    apple, copy, hsbc = by_path["news/apple-warning"], by_path["wire/apple-warning-copy"], by_path["news/hsbc-profit"]
    assert "utm_source" not in (apple.url or "")
    assert apple.story_id == apple.id and apple.is_novel is True
    assert copy.story_id == apple.id and copy.is_novel is False  # syndicated copy linked, still published
    assert hsbc.is_novel is True
    assert apple.published_at is not None and apple.published_at.isoformat() == "2026-11-20T07:00:00+00:00"
    assert apple.language == "en"
    assert {"$AAPL", "Apple Inc."} <= {e.value for e in apple.entities}
    assert "Copyright" not in apple.text and "Markets" not in apple.text  # boilerplate left out
    published_before = len(sink.docs)

    # a second run (a new process: fresh fetcher, same database) is conditional and answered 304
    second = Crawler(make_fetcher(fetcher.settings, fetcher.state.db), ingestor)  # type: ignore[union-attr]
    stats2 = second.crawl([site.url("/feed.xml")])
    feed_requests = site.requests_to("/feed.xml")
    assert len(feed_requests) == 2
    assert feed_requests[1].headers.get("if-none-match") == '"feed-v1"'
    assert feed_requests[1].headers.get("if-modified-since") == DATE
    assert feed_requests[1].status == 304
    assert stats2.not_modified == 1
    assert len(sink.docs) == published_before  # nothing published twice
    assert len(site.requests_to("/robots.txt")) == 1  # robots.txt reused from the store (< 24 h)


@pytest.mark.parametrize(
    ("robots", "expected"),
    [
        (Route(status=404, body=b"nope"), True),  # 4xx: allow all
        (Route(status=503, body=b"down"), False),  # 5xx: disallow all
        (Route(body=b"User-agent: riskstream-crawler\nDisallow: /\n\nUser-agent: *\nAllow: /\n"), False),
        (Route(body=b"User-agent: *\nDisallow: /\n"), False),
        (Route(body=b"User-agent: *\nDisallow: /private/\n"), True),
    ],
)
def test_robots_variants(site: Site, fetcher: Fetcher, robots: Route, expected: bool) -> None:
    site.routes["/robots.txt"] = robots
    site.routes["/page"] = Route(body=b"<html><body>x</body></html>", headers={"Content-Type": "text/html"})
    assert fetcher.allowed_by_robots(site.url("/page")) is expected
    if not expected:
        with pytest.raises(FetchError) as info:
            fetcher.get(site.url("/page"))
        assert info.value.reason == "disallowed_by_robots"
        assert site.requests_to("/page") == []


def test_unreachable_robots_disallows(ingest_settings: IngestSettings, db: Database) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fetcher = make_fetcher(ingest_settings, db)
    assert fetcher.allowed_by_robots(f"http://127.0.0.1:{port}/feed.xml") is False
    fetcher.close()


def test_crawl_delay_paces_requests(site: Site, ingest_settings: IngestSettings, db: Database) -> None:
    site.routes["/robots.txt"] = Route(body=b"User-agent: *\nCrawl-delay: 7\n")
    site.routes["/a"] = Route(body=b"a", headers={"Content-Type": "text/plain"})
    sleeps: list[float] = []
    fetcher = make_fetcher(ingest_settings, db, sleeps)
    fetcher.get(site.url("/a"))
    fetcher.get(site.url("/a"))
    assert sleeps and 6.0 < max(sleeps) <= 7.0  # the second request waited for the Crawl-delay
    fetcher.close()


def test_429_retry_after_is_honoured(site: Site, ingest_settings: IngestSettings, db: Database) -> None:
    site.routes["/feed"] = Route(status=429, headers={"Retry-After": "1"}, then=Route(body=b"ok"))
    sleeps: list[float] = []
    fetcher = make_fetcher(ingest_settings, db, sleeps)
    result = fetcher.get(site.url("/feed"))
    assert result.status == 200 and result.content == b"ok"
    assert [s.status for s in site.requests_to("/feed")] == [429, 200]
    assert any(0.9 <= s <= 1.0 for s in sleeps)
    fetcher.close()


def test_long_retry_after_defers_the_url_across_runs(site: Site, ingest_settings: IngestSettings, db: Database) -> None:
    site.routes["/feed"] = Route(status=503, headers={"Retry-After": "3600"})
    fetcher = make_fetcher(ingest_settings, db)
    with pytest.raises(FetchError) as info:
        fetcher.get(site.url("/feed"))
    assert info.value.reason == "retry_after_too_long"
    later = make_fetcher(ingest_settings, db)  # the next cron run does not even ask
    with pytest.raises(FetchError) as info2:
        later.get(site.url("/feed"))
    assert info2.value.reason == "deferred"
    assert len(site.requests_to("/feed")) == 1
    fetcher.close()
    later.close()


def test_retry_after_http_date() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 20, 7, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Fri, 20 Nov 2026 07:00:30 GMT", now) == 30.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("soon") is None


def test_slow_response_times_out(site: Site, fetcher: Fetcher) -> None:
    site.routes["/slow"] = Route(body=b"late", delay=2.5)
    with pytest.raises(FetchError) as info:
        fetcher.get(site.url("/slow"))
    assert info.value.reason == "timeout"


def test_huge_response_is_aborted(site: Site, fetcher: Fetcher) -> None:
    site.routes["/huge"] = Route(stream_bytes=50_000_000, headers={"Content-Type": "text/html"})
    with pytest.raises(FetchError) as info:
        fetcher.get(site.url("/huge"))
    assert info.value.reason == "too_large"
    site.routes["/declared"] = Route(body=b"y" * 400_000)  # Content-Length over the limit: not even read
    with pytest.raises(FetchError) as info:
        fetcher.get(site.url("/declared"))
    assert info.value.reason == "too_large"


def test_redirects_are_checked_per_hop(site: Site, fetcher: Fetcher) -> None:
    site.routes["/robots.txt"] = Route(body=ROBOTS)
    site.routes["/go-private"] = Route(status=302, headers={"Location": "/private/x"})
    site.routes["/private/x"] = Route(body=b"secret")
    site.routes["/go-file"] = Route(status=301, headers={"Location": "file:///etc/passwd"})
    site.routes["/go-away"] = Route(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data"})
    site.routes["/go-ok"] = Route(status=301, headers={"Location": "/ok"})
    site.routes["/ok"] = Route(body=b"fine")
    for path, reason in [
        ("/go-private", "disallowed_by_robots"),
        ("/go-file", "scheme_not_allowed"),
        ("/go-away", "host_not_allowed"),
    ]:
        with pytest.raises(FetchError) as info:
            fetcher.get(site.url(path))
        assert info.value.reason == reason
    assert site.requests_to("/private/x") == []
    result = fetcher.get(site.url("/go-ok"))
    assert result.content == b"fine" and result.final_url == site.url("/ok")


def test_truncated_feed_yields_what_parses(site: Site, fetcher: Fetcher, ingestor: Ingestor, sink: ListSink) -> None:
    news_site(site)
    full = rss(
        [
            ("Apple warns on China", site.url("/news/apple-warning"), "Fri, 20 Nov 2026 08:00:00 +0100"),
            ("HSBC profit jumps", site.url("/news/hsbc-profit"), "Fri, 20 Nov 2026 10:00:00 +0100"),
        ]
    )
    cut = full[: full.index("<item>", full.index("<item>") + 1) + 30]  # second item cut in the middle
    site.routes["/broken.xml"] = Route(body=cut.encode(), headers={"Content-Type": "application/rss+xml"})
    stats = Crawler(fetcher, ingestor).crawl([site.url("/broken.xml")])
    assert stats.feed_errors == 1
    assert [d.title for d in sink.docs] == ["Apple warns on China"]


def test_wrong_encodings(site: Site, fetcher: Fetcher, ingestor: Ingestor, sink: ListSink) -> None:
    news_site(site)
    text = STORY.replace("Analysts", "Analysts in Zürich and Köln")
    # page declared UTF-8 but written in Latin-1: decoded by detection, not mojibake
    site.routes["/news/latin1"] = Route(
        body=article_html("Märkte", text, charset=None).encode("latin-1"),
        headers={"Content-Type": "text/html; charset=utf-8"},
    )
    # binary garbage served as a page: skipped with a logged reason
    site.routes["/news/binary"] = Route(body=bytes(range(256)) * 50, headers={"Content-Type": "text/html"})
    feed = rss(
        [
            ("Märkte in Zürich", site.url("/news/latin1"), "Fri, 20 Nov 2026 08:00:00 +0100"),
            ("Binary", site.url("/news/binary"), "Fri, 20 Nov 2026 08:00:00 +0100"),
        ],
        encoding="iso-8859-1",
    )
    site.routes["/latin1.xml"] = Route(body=feed.encode("latin-1"), headers={"Content-Type": "application/xml"})
    stats = Crawler(fetcher, ingestor).crawl([site.url("/latin1.xml")])
    docs = {d.title: d for d in sink.docs}
    assert "Märkte in Zürich" in docs  # the feed's declared ISO-8859-1 is honoured
    assert "Zürich and Köln" in docs["Märkte in Zürich"].text
    assert stats.skipped["undecodable"] == 1
    assert docs["Binary"].metadata["text_source"] == "feed_summary"  # the entry survives with its summary


def test_unacknowledged_feed_is_fetched_again_next_pass(
    site: Site, fetcher: Fetcher, ingestor: Ingestor, sink: ListSink
) -> None:
    news_site(site)
    sink.fail_next = 1  # the broker does not acknowledge the first pass
    crawler = Crawler(fetcher, ingestor)
    first = crawler.crawl([site.url("/feed.xml")])
    assert first.publish_failures == 1 and sink.docs == []
    second = crawler.crawl([site.url("/feed.xml")])
    assert [s.status for s in site.requests_to("/feed.xml")] == [200, 200]  # no 304: validators were not stored
    assert second.published == 3 and len(sink.docs) == 3

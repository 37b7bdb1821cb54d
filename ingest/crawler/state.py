"""Crawl state persisted in ``crawl_state`` (schemas.db.CrawlStateRow), so a cron ``--once`` run is polite too.

One row per URL: the conditional-GET validators (ETag, Last-Modified) of feeds and pages, the status and body of
robots.txt files, and a ``retry_after`` time when a host asked us (429/503) to come back later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from riskstream.db import Database
from schemas.db import CrawlStateRow


@dataclass(frozen=True)
class UrlState:
    url: str
    etag: str | None = None
    last_modified: str | None = None
    status: int | None = None
    body: bytes | None = None
    fetched_at: datetime | None = None
    retry_after: datetime | None = None


class CrawlState:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, url: str) -> UrlState | None:
        with self.db.session() as session:
            row = session.get(CrawlStateRow, url)
            if row is None:
                return None
            return UrlState(row.url, row.etag, row.last_modified, row.status, row.body, row.fetched_at, row.retry_after)

    def put(self, state: UrlState) -> None:
        with self.db.session() as session, session.begin():
            session.merge(
                CrawlStateRow(
                    url=state.url,
                    etag=state.etag,
                    last_modified=state.last_modified,
                    status=state.status,
                    body=state.body,
                    fetched_at=state.fetched_at,
                    retry_after=state.retry_after,
                )
            )

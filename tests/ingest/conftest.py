"""Fixtures only the ingest tests need: the local web site, fast-failing settings, a pipeline with a list sink."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.pipeline import Ingestor
from ingest.publisher import ListSink
from ingest.settings import IngestSettings
from riskstream.db import Database
from tests.ingest.site import Site


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


@pytest.fixture
def ingest_settings(tmp_path: Path) -> IngestSettings:
    return IngestSettings(
        data_dir=tmp_path,
        per_host_interval_s=0.0,
        connect_timeout_s=1.0,
        read_timeout_s=1.0,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        fetch_retries=2,
        max_response_bytes=300_000,
        max_retry_after_s=2.0,
    )


@pytest.fixture
def db(ingest_settings: IngestSettings) -> Iterator[Database]:
    database = Database(ingest_settings.db_url)
    yield database
    database.dispose()


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def ingestor(ingest_settings: IngestSettings, sink: ListSink, db: Database) -> Ingestor:
    return Ingestor(ingest_settings, sink, db=db)

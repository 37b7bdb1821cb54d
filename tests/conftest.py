"""Shared test fixtures: the real Kafka, Elasticsearch and PostgreSQL, and unique names per test.

Fixtures (no others are registered here; put area-only fixtures in ``tests/<area>/conftest.py``):

``stack`` (session)
    Where the engines are: ``kafka_bootstrap``, ``es_url``, ``pg_admin_url`` and ``data_dir``. When
    ``RISKSTREAM_TEST_KAFKA_BOOTSTRAP`` and ``RISKSTREAM_TEST_ES_URL`` are set (for example from
    ``/tmp/riskstream-devstack.env``), those running services are used and nothing is started or stopped.
    Otherwise the launcher (the same code as ``riskstream services up``) starts Kafka and Elasticsearch on
    free loopback ports in a temporary directory, and stops them at the end of the session.
    ``pg_admin_url`` stays None until a test asks for ``pg_url`` (PostgreSQL starts lazily, see below), unless
    ``RISKSTREAM_TEST_PG_URL`` names a running server. The broker the tests start also has a SASL_PLAINTEXT
    listener (``kafka_sasl_bootstrap``, with ``kafka_sasl_username`` / ``kafka_sasl_password``); with a running
    stack, ``RISKSTREAM_TEST_KAFKA_SASL_BOOTSTRAP`` / ``_USERNAME`` / ``_PASSWORD`` name one (the SASL tests skip
    without).

``postgres_stack`` (session)
    Starts PostgreSQL in the same stack on first use (or uses ``RISKSTREAM_TEST_PG_URL``); returns the admin URL.

``unique_id`` (function)
    A short random id for names this test creates (topics ``t{uid}.…``, aliases ``rs{uid}-…``).

``settings`` (function)
    A :class:`riskstream.settings.CommonSettings` pointing at the stack, with ``data_dir = tmp_path`` (so the
    SQLite store is per test), this test's own topics and Elasticsearch aliases, and ``seed_data`` from
    ``RISKSTREAM_SEED_DATA`` (default ``../shared/data`` beside the repository). After the test, every topic
    whose name starts with ``t{uid}.`` and every index and index template matching ``rs{uid}-*`` is deleted:
    name anything else a test creates with the same prefixes and it is cleaned up too.

``pg_url`` (function)
    A fresh, empty PostgreSQL database (``postgresql+psycopg://…``, SQLAlchemy form), dropped after the test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from riskstream.settings import CommonSettings

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent


@dataclass
class StackInfo:
    """Addresses of the engines the tests use."""

    kafka_bootstrap: str
    es_url: str
    data_dir: Path
    pg_admin_url: str | None = None
    launched: Any = None  # the launcher.stack.Stack when this session started the services
    # the broker's SASL_PLAINTEXT listener (PLAIN) and its one user, when the stack in use has one
    kafka_sasl_bootstrap: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None


def _launcher_settings(data_dir: Path, **overrides: Any) -> Any:
    from launcher.base import free_port
    from launcher.settings import LauncherSettings

    kafka_port = free_port()
    es_port = free_port(avoid={kafka_port})
    sasl_port = free_port(avoid={kafka_port, es_port})
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "kafka_bootstrap": f"127.0.0.1:{kafka_port}",
        "kafka_sasl_port": sasl_port,
        "kafka_sasl_username": "riskstream-test",
        "kafka_sasl_password": secrets.token_urlsafe(16),
        "es_url": f"http://127.0.0.1:{es_port}",
        "database_url": None,
        "services": "kafka,elasticsearch",
        "with_postgres": False,
        "kafka_heap": "384m",
        "es_heap": "512m",
        "start_timeout": 300.0,
        "stop_timeout": 20.0,
    }
    values.update(overrides)
    return LauncherSettings(**values)


@pytest.fixture(scope="session")
def stack() -> Iterator[StackInfo]:
    kafka = os.environ.get("RISKSTREAM_TEST_KAFKA_BOOTSTRAP")
    es = os.environ.get("RISKSTREAM_TEST_ES_URL")
    pg = os.environ.get("RISKSTREAM_TEST_PG_URL") or None
    if kafka and es:
        from launcher.elasticsearch import probe_elasticsearch
        from launcher.kafka import probe_kafka

        for name, health in (("Kafka", probe_kafka(kafka, 10.0)), ("Elasticsearch", probe_elasticsearch(es, 10.0))):
            if not health.healthy:
                pytest.fail(
                    f"RISKSTREAM_TEST_* names a {name} that is not healthy ({health.detail}): start the dev stack "
                    "(riskstream services up) or unset RISKSTREAM_TEST_KAFKA_BOOTSTRAP / RISKSTREAM_TEST_ES_URL "
                    "to let the tests start their own",
                    pytrace=False,
                )
        yield StackInfo(
            kafka_bootstrap=kafka,
            es_url=es,
            data_dir=Path(tempfile.gettempdir()),
            pg_admin_url=pg,
            kafka_sasl_bootstrap=os.environ.get("RISKSTREAM_TEST_KAFKA_SASL_BOOTSTRAP"),
            kafka_sasl_username=os.environ.get("RISKSTREAM_TEST_KAFKA_SASL_USERNAME"),
            kafka_sasl_password=os.environ.get("RISKSTREAM_TEST_KAFKA_SASL_PASSWORD"),
        )
        return
    from launcher.stack import Stack

    # /tmp itself, not pytest's 0700 basetemp: under root, Elasticsearch runs as the service user and must reach it
    data_dir = Path(tempfile.mkdtemp(prefix="riskstream-test-stack-"))
    data_dir.chmod(0o755)
    launched = Stack(_launcher_settings(data_dir))
    s = launched.settings
    info = StackInfo(
        kafka_bootstrap=s.kafka_bootstrap,
        es_url=s.es_url,
        data_dir=data_dir,
        pg_admin_url=pg,
        launched=launched,
        kafka_sasl_bootstrap=f"127.0.0.1:{s.kafka_sasl_port}",
        kafka_sasl_username=s.kafka_sasl_username,
        kafka_sasl_password=s.kafka_sasl_password.get_secret_value(),
    )
    try:
        launched.up(["kafka", "elasticsearch"])
        yield info
    finally:
        launched.down(purge=True)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_stack(stack: StackInfo, request: pytest.FixtureRequest) -> str:
    """The admin URL of a PostgreSQL server (started in the session's stack on first use)."""
    if stack.pg_admin_url:
        return stack.pg_admin_url
    from launcher.base import free_port
    from launcher.postgres import PostgresService
    from launcher.stack import Stack

    if stack.launched is not None:
        pg_stack: Stack = stack.launched
    else:
        # the dev stack has no PostgreSQL: run one in a data dir of our own (stopped by the finalizer below)
        data_dir = Path(tempfile.mkdtemp(prefix="riskstream-test-pg-"))
        data_dir.chmod(0o755)
        pg_stack = Stack(_launcher_settings(data_dir))
    port = free_port()
    pg_stack.settings = pg_stack.settings.model_copy(update={"postgres_port": port})
    pg_stack.up(["postgres"])
    svc = pg_stack.service("postgres")
    assert isinstance(svc, PostgresService)
    stack.pg_admin_url = svc.admin_url
    if stack.launched is None:

        def _stop() -> None:
            pg_stack.down(purge=True)
            shutil.rmtree(pg_stack.settings.data_dir, ignore_errors=True)

        request.addfinalizer(_stop)
    return stack.pg_admin_url


@pytest.fixture
def unique_id() -> str:
    return uuid.uuid4().hex[:10]


def _seed_data() -> Path:
    env = os.environ.get("RISKSTREAM_SEED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def settings(stack: StackInfo, tmp_path: Path, unique_id: str) -> Iterator[CommonSettings]:
    uid = unique_id
    value = CommonSettings(
        data_dir=tmp_path,
        cache_dir=None,
        kafka_bootstrap=stack.kafka_bootstrap,
        es_url=stack.es_url,
        es_api_key=None,
        database_url=None,
        seed_data=_seed_data(),
        topic_raw=f"t{uid}.docs.raw",
        topic_scored=f"t{uid}.docs.scored",
        topic_dlq=f"t{uid}.docs.dlq",
        topic_alerts=f"t{uid}.alerts",
        es_docs_alias=f"rs{uid}-docs",
        es_alerts_alias=f"rs{uid}-alerts",
    )
    yield value
    _delete_topics(stack.kafka_bootstrap, f"t{uid}.")
    _delete_es(stack.es_url, f"rs{uid}-")


def _delete_topics(bootstrap: str, prefix: str) -> None:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="riskstream-tests-cleanup")
    except Exception as exc:  # cleanup must not hide the test's own result
        log.warning("topic cleanup skipped: %r", exc)
        return
    try:
        mine = [t for t in admin.list_topics() if t.startswith(prefix)]
        if mine:
            admin.delete_topics(mine, raise_errors=False)
    except Exception as exc:
        log.warning("topic cleanup failed: %r", exc)
    finally:
        admin.close()


def _delete_es(url: str, prefix: str) -> None:
    from elasticsearch import Elasticsearch

    client = Elasticsearch(url, request_timeout=30)
    try:
        indices = client.indices.get(index=f"{prefix}*", expand_wildcards="all", allow_no_indices=True)
        for name in indices:
            client.options(ignore_status=404).indices.delete(index=name)
        templates = client.options(ignore_status=404).indices.get_index_template(name=f"{prefix}*")
        for tpl in templates.body.get("index_templates", []) if templates.meta.status == 200 else []:
            client.options(ignore_status=404).indices.delete_index_template(name=tpl["name"])
    except Exception as exc:
        log.warning("index cleanup failed: %r", exc)
    finally:
        client.close()


@pytest.fixture
def pg_url(postgres_stack: str, unique_id: str) -> Iterator[str]:
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    name = f"rs_test_{unique_id}"
    with psycopg.connect(postgres_stack, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(postgres_stack).set(drivername="postgresql+psycopg", database=name)
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(postgres_stack, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

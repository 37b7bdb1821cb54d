"""Alembic migrations build the whole SQL store and take it down again, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from riskstream.db import downgrade, upgrade
from schemas.db import Base

EXPECTED = set(Base.metadata.tables)


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    upgrade(url)
    assert _tables(url) == EXPECTED
    upgrade(url)  # at head already: a no-op, not an error
    assert _tables(url) == EXPECTED
    downgrade(url, "base")
    assert _tables(url) == set()
    upgrade(url)  # and back up again from empty
    assert _tables(url) == EXPECTED


def test_expected_tables_are_the_documented_store() -> None:
    assert {"users", "labels", "alert_rules", "model_versions"} <= EXPECTED


def test_migrations_up_and_down_on_sqlite(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'store.db'}")


@pytest.mark.services
@pytest.mark.postgres
def test_migrations_up_and_down_on_postgres(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://")
    _round_trip(pg_url)

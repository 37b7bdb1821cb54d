"""Fixtures of the dashboard tests: a migrated SQLite store with one user per role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.auth import CurrentUser, create_user
from riskstream.db import Database

PASSWORD = "correct horse battery"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'dash.db'}")
    yield database
    database.dispose()


def add_user(db: Database, name: str, role: str) -> CurrentUser:
    with db.session() as session:
        row = create_user(session, name, PASSWORD, role, rounds=4)  # cheap hashes: tests only
        session.commit()
        return CurrentUser(id=row.id, username=row.username, role=row.role)


@pytest.fixture
def users(db: Database) -> dict[str, CurrentUser]:
    return {role: add_user(db, f"{role}1", role) for role in ("viewer", "labeler", "admin")}

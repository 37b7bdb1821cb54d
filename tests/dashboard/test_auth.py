"""Passwords, login and sessions against the real (SQLite) store."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from dashboard.auth import (
    AuthError,
    LoginSession,
    LoginThrottle,
    authenticate,
    check_password,
    create_user,
    hash_password,
)
from riskstream.db import Database
from schemas.db import User
from tests.dashboard.conftest import PASSWORD, add_user


def test_hashes_are_salted_bcrypt_and_limits_are_enforced() -> None:
    a, b = hash_password(PASSWORD, rounds=4), hash_password(PASSWORD, rounds=4)
    assert a != b and a.startswith("$2b$")
    assert check_password(PASSWORD, a) and not check_password(PASSWORD + "x", a)
    with pytest.raises(ValueError, match="at least"):
        hash_password("short")
    with pytest.raises(ValueError, match="72 bytes"):
        hash_password("é" * 40)  # 80 bytes: bcrypt would silently truncate it
    assert not check_password(PASSWORD, "not-a-hash")


def test_login_right_wrong_unknown_inactive(db: Database) -> None:
    add_user(db, "ana", "labeler")
    with db.session() as s:
        user = authenticate(s, "ana", PASSWORD)
    assert (user.username, user.role) == ("ana", "labeler")
    with db.session() as s:
        assert s.scalars(select(User).where(User.username == "ana")).one().last_login_at is not None
    for name, password in (("ana", "wrong password!"), ("nobody", PASSWORD)):
        with db.session() as s, pytest.raises(AuthError, match="invalid username or password"):
            authenticate(s, name, password)
    with db.session() as s:
        s.scalars(select(User).where(User.username == "ana")).one().active = False
        s.commit()
    with db.session() as s, pytest.raises(AuthError):
        authenticate(s, "ana", PASSWORD)


def test_usernames_roles_and_duplicates_are_checked(db: Database) -> None:
    with db.session() as s:
        with pytest.raises(ValueError, match="role"):
            create_user(s, "bob", PASSWORD, "superuser", rounds=4)
        with pytest.raises(ValueError, match="username"):
            create_user(s, "bad name", PASSWORD, "viewer", rounds=4)
        create_user(s, "bob", PASSWORD, "viewer", rounds=4)
        with pytest.raises(ValueError, match="exists"):
            create_user(s, "bob", PASSWORD, "admin", rounds=4)


def test_throttle_locks_a_username_after_repeated_failures(db: Database) -> None:
    add_user(db, "eve", "viewer")
    throttle = LoginThrottle(max_failures=3, lockout_seconds=60)
    for _ in range(3):
        with db.session() as s, pytest.raises(AuthError):
            authenticate(s, "eve", "guess guess guess", throttle=throttle)
    with db.session() as s, pytest.raises(AuthError):  # even the right password is refused while locked
        authenticate(s, "eve", PASSWORD, throttle=throttle)
    assert not throttle.locked("eve", now=10**9)  # the lock expires


def test_session_expires_when_idle(db: Database) -> None:
    user = add_user(db, "ida", "viewer")
    session = LoginSession(user=user, idle_seconds=60, last_seen=1000.0)
    assert session.touch(now=1059.0)
    assert session.touch(now=1118.0)  # activity keeps it alive
    assert not session.touch(now=1179.0)


def test_untrusted_text_cannot_inject_markdown() -> None:
    from dashboard.text import md

    hostile = "![x](http://169.254.169.254/pixel.png) [click](javascript:alert(1)) **bold** <b>hi</b>"
    escaped = md(hostile)
    for raw in ("![x](", "[click](", "**bold**", "<b>"):
        assert raw not in escaped
    assert escaped.replace("\\", "") == hostile  # nothing lost, only escaped

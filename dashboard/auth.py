"""Dashboard users: bcrypt password hashes, authentication, roles, and login sessions.

Passwords are hashed with bcrypt (per-password salt, cost 12). bcrypt reads at most 72 bytes, so longer
passwords are refused rather than silently truncated. An unknown username costs the same bcrypt work as a wrong
password, so timing does not reveal which usernames exist. Authentication failures all raise
:class:`AuthError` with the same message; the reason is logged (never the password).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import bcrypt
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.db import ROLES, User

log = logging.getLogger(__name__)

ROLE_RANK = {"viewer": 0, "labeler": 1, "admin": 2}
MIN_PASSWORD = 10
MAX_PASSWORD_BYTES = 72
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,119}$")
_DUMMY_HASH = bcrypt.hashpw(b"riskstream-timing-equaliser", bcrypt.gensalt(rounds=12))


class AuthError(Exception):
    """Login refused (wrong password, unknown or inactive user, locked out): one message for all."""


class PermissionDeniedError(Exception):
    """The current user's role does not allow this action."""


PermissionDenied = PermissionDeniedError  # the name the brief and the docs use


@dataclass(frozen=True)
class CurrentUser:
    """Who is logged in. The data layer re-checks role and ``active`` against the store on every call."""

    id: int
    username: str
    role: str


def validate_username(name: str) -> str:
    if not _USERNAME.match(name):
        raise ValueError("username: 2-120 characters of letters, digits, '.', '_', '@' or '-'")
    return name


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    return role


def hash_password(password: str, *, rounds: int = 12) -> str:
    raw = password.encode("utf-8")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password must have at least {MIN_PASSWORD} characters")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds=rounds)).decode("ascii")


def check_password(password: str, hashed: str) -> bool:
    raw = password.encode("utf-8")
    if len(raw) > MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(raw, hashed.encode("ascii"))
    except ValueError:  # a malformed stored hash
        return False


def create_user(session: Session, username: str, password: str, role: str, *, rounds: int = 12) -> User:
    validate_username(username)
    validate_role(role)
    if session.scalars(select(User).where(User.username == username)).first() is not None:
        raise ValueError(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password, rounds=rounds), role=role, active=True)
    session.add(user)
    session.flush()
    return user


@dataclass
class LoginThrottle:
    """Failed logins per username in this process; too many lock the name for a while."""

    max_failures: int = 5
    lockout_seconds: float = 300.0
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def locked(self, username: str, now: float | None = None) -> bool:
        current = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._failures.get(username, []) if current - t < self.lockout_seconds]
            self._failures[username] = recent
            return len(recent) >= self.max_failures

    def failed(self, username: str, now: float | None = None) -> None:
        with self._lock:
            self._failures.setdefault(username, []).append(time.monotonic() if now is None else now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(username, None)


def authenticate(
    session: Session, username: str, password: str, *, throttle: LoginThrottle | None = None
) -> CurrentUser:
    """The user for these credentials, or :class:`AuthError`. Records ``last_login_at`` on success."""
    if throttle is not None and throttle.locked(username):
        log.warning("login refused for %r: too many failures", username)
        raise AuthError("invalid username or password")
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None:
        check_password(password, _DUMMY_HASH.decode())  # same cost as a real check
        reason = "unknown user"
    elif not check_password(password, user.password_hash):
        reason = "wrong password"
    elif not user.active:
        reason = "inactive user"
    else:
        user.last_login_at = datetime.now(tz=UTC)
        session.commit()
        if throttle is not None:
            throttle.succeeded(username)
        log.info("login: %s (%s)", user.username, user.role)
        return CurrentUser(id=user.id, username=user.username, role=user.role)
    if throttle is not None:
        throttle.failed(username)
    log.warning("login refused for %r: %s", username, reason)
    raise AuthError("invalid username or password")


@dataclass
class LoginSession:
    """A logged-in browser session (kept in Streamlit's server-side session state); expires when idle."""

    user: CurrentUser
    idle_seconds: float
    last_seen: float = field(default_factory=time.monotonic)

    def touch(self, now: float | None = None) -> bool:
        """Refresh the session; False (and the caller logs out) when it was idle too long."""
        current = time.monotonic() if now is None else now
        if current - self.last_seen > self.idle_seconds:
            return False
        self.last_seen = current
        return True

"""A PostgreSQL server from Debian's packages, on loopback, with its data under the data dir.

Authentication is ``trust`` for connections over 127.0.0.1 and the private unix socket (inside the data dir):
fine for one developer's machine, where every local user could read the data dir anyway; production uses
password or certificate authentication (see docs/services.md). The superuser is the database URL's user
(``postgres`` by default). PostgreSQL refuses to run as root: under root it runs as the service user.
"""

from __future__ import annotations

import logging
import pwd
import signal
from pathlib import Path
from typing import Any

from launcher.base import (
    Health,
    ProcessRecord,
    Service,
    ServiceError,
    chown_tree,
    is_listening,
    require_loopback,
    run_checked,
    spawn,
)
from launcher.settings import LauncherSettings

log = logging.getLogger(__name__)

PG_FIX = "install PostgreSQL (apt-get install postgresql, or `make install`) or set RISKSTREAM_POSTGRES_BIN_DIR"


def postgres_bin_dir(configured: Path | None) -> Path:
    if configured is not None:
        if (configured / "postgres").exists():
            return configured
        raise ServiceError("postgres", f"no postgres binary in {configured}", PG_FIX)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise ServiceError("postgres", "PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin)", PG_FIX)
    return found[-1].parent


def probe_postgres(host: str, port: int, user: str, timeout: float = 2.0) -> Health:
    if not is_listening(port, host):
        return Health(False, detail=f"nothing listens on {host}:{port}")
    import psycopg

    try:
        with psycopg.connect(
            host=host, port=port, user=user, dbname="postgres", connect_timeout=max(1, int(timeout))
        ) as conn:
            row = conn.execute("SELECT current_setting('server_version')").fetchone()
    except psycopg.Error as exc:
        return Health(False, listening=True, detail=f"{host}:{port} does not answer as PostgreSQL: {exc}")
    version = str(row[0]) if row else None
    return Health(True, version, f"PostgreSQL {version}, superuser {user}", listening=True)


class PostgresService(Service):
    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, do not wait for clients

    def __init__(
        self,
        settings: LauncherSettings,
        root: Path,
        previous: dict[str, Any],
        *,
        account: pwd.struct_passwd | None,
    ) -> None:
        from sqlalchemy.engine import make_url

        self.settings = settings
        self.root = root
        self.account = account
        self.data = root / "data"
        self.run_dir = root / "run"
        self.log = root / "postgres.log"
        self.database: str | None = None
        self.user = "postgres"
        self.host = "127.0.0.1"
        self.port = settings.postgres_port
        prev_port = (previous.get("ports") or {}).get("client")
        if "postgres_port" not in settings.model_fields_set and isinstance(prev_port, int):
            self.port = prev_port  # `status`/`down` without --postgres-port: the port this stack was started on
        if settings.db_url.startswith("postgresql"):
            url = make_url(settings.db_url)
            self.host = url.host or "127.0.0.1"
            self.port = url.port or 5432
            self.user = url.username or "postgres"
            self.database = url.database
        self._bin: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        """A URL of the maintenance database, able to CREATE DATABASE (psycopg / libpq form)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def ports(self) -> dict[str, int]:
        return {"client": self.port}

    def probe(self, timeout: float = 2.0) -> Health:
        return probe_postgres(self.host, self.port, self.user, timeout)

    def prepare(self) -> None:
        require_loopback(self.name, self.host, "RISKSTREAM_DATABASE_URL")
        self._bin = postgres_bin_dir(self.settings.postgres_bin_dir)
        for directory in (self.root, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            chown_tree(self.root, self.account)
        self.run_dir.chmod(0o700)
        if not (self.data / "PG_VERSION").exists():
            run_checked(
                self.name,
                [
                    str(self._bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                cause="initdb failed",
                fix=f"delete {self.data} if it is a broken or foreign cluster, then retry",
                timeout=180,
                user=self.account.pw_name if self.account is not None else None,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd=self.root,
            )

    def start(self) -> ProcessRecord:
        if self._bin is None:
            raise ServiceError(self.name, "start() before prepare()", "call prepare() first")
        argv = [
            str(self._bin / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.run_dir),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            "shared_buffers=64MB",
            "-c",
            "max_connections=100",
        ]
        return spawn(
            argv,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            log=self.log,
            cwd=self.root,
            user=self.account.pw_name if self.account is not None else None,
        )

    def after_healthy(self) -> None:
        """Create the database the URL names (migrations need it to exist)."""
        if not self.database or self.database == "postgres":
            return
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def extra_state(self) -> dict[str, Any]:
        return {"admin_url": self.admin_url, "data": str(self.data), "superuser": self.user}

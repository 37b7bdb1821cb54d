"""``riskstream dashboard``: run the Streamlit app; manage dashboard users."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from dashboard.settings import DashboardSettings
from riskstream.cliutil import echo_json, with_settings

APP = Path(__file__).resolve().parent / "app.py"


@click.group("dashboard")
def dashboard() -> None:
    """Run the Streamlit dashboard; manage dashboard users."""


@dashboard.command("run")
@click.option("--port", type=int, default=None, help="Port to listen on (overrides --dashboard-port).")
@with_settings(DashboardSettings)
def run_cmd(port: int | None, settings: DashboardSettings) -> None:
    """Serve the dashboard (login required; create the first admin with `dashboard users add`)."""
    from riskstream.db import upgrade

    upgrade(settings.db_url)
    env = {**os.environ, **settings.to_env()}
    argv = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", settings.dashboard_host,
        "--server.port", str(port or settings.dashboard_port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
    ]  # fmt: skip
    click.echo(f"dashboard on http://{settings.dashboard_host}:{port or settings.dashboard_port}")
    raise SystemExit(subprocess.call(argv, env=env))


@dashboard.group("users")
def users() -> None:
    """Dashboard users and their roles (viewer, labeler, admin)."""


@users.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["viewer", "labeler", "admin"]), required=True)
@click.option(
    "--password",
    envvar="RISKSTREAM_NEW_USER_PASSWORD",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Initial password (10+ characters); prompted for unless RISKSTREAM_NEW_USER_PASSWORD is set.",
)
@with_settings(DashboardSettings)
def users_add(username: str, role: str, password: str, settings: DashboardSettings) -> None:
    """Create USERNAME with ROLE."""
    from dashboard.auth import create_user
    from riskstream.db import Database

    db = Database(settings.db_url)
    try:
        with db.session() as session:
            create_user(session, username, password, role)
            session.commit()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
    click.echo(f"user {username} ({role}) created")


@users.command("list")
@with_settings(DashboardSettings)
def users_list(settings: DashboardSettings) -> None:
    """List users (never their password hashes)."""
    from sqlalchemy import select

    from riskstream.db import Database
    from schemas.db import User

    db = Database(settings.db_url)
    with db.session() as session:
        rows = [
            {"username": u.username, "role": u.role, "active": u.active, "last_login_at": u.last_login_at}
            for u in session.scalars(select(User).order_by(User.username))
        ]
    db.dispose()
    echo_json(rows)


@users.command("set-active")
@click.argument("username")
@click.argument("active", type=click.BOOL)
@with_settings(DashboardSettings)
def users_set_active(username: str, active: bool, settings: DashboardSettings) -> None:
    """Activate (true) or deactivate (false) USERNAME; a deactivated user is refused at once."""
    from sqlalchemy import select

    from riskstream.db import Database
    from schemas.db import User

    db = Database(settings.db_url)
    with db.session() as session:
        row = session.scalars(select(User).where(User.username == username)).first()
        if row is None:
            db.dispose()
            raise click.ClickException(f"no user {username!r}")
        row.active = active
        session.commit()
    db.dispose()
    click.echo(f"user {username} {'activated' if active else 'deactivated'}")

"""`riskstream dashboard users ...` through the real CLI and SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dashboard.auth import authenticate
from dashboard.settings import DashboardSettings
from riskstream.cli import main
from riskstream.db import Database


def test_users_add_list_deactivate(tmp_path: Path) -> None:
    runner = CliRunner()
    flags = ["--data-dir", str(tmp_path)]
    env = {"RISKSTREAM_NEW_USER_PASSWORD": "a long enough secret"}
    result = runner.invoke(main, ["dashboard", "users", "add", "alice", "--role", "labeler", *flags], env=env)
    assert result.exit_code == 0, result.output
    assert "a long enough secret" not in result.output
    again = runner.invoke(main, ["dashboard", "users", "add", "alice", "--role", "admin", *flags], env=env)
    assert again.exit_code == 1 and "exists" in again.output
    short = runner.invoke(
        main, ["dashboard", "users", "add", "bob", "--role", "viewer", *flags], input="short\nshort\n"
    )
    assert short.exit_code == 1 and "at least" in short.output
    listed = json.loads(runner.invoke(main, ["dashboard", "users", "list", *flags]).output)
    assert [(u["username"], u["role"], u["active"]) for u in listed] == [("alice", "labeler", True)]
    assert "password" not in json.dumps(listed)
    db = Database(f"sqlite:///{tmp_path / 'riskstream.db'}")
    with db.session() as s:
        assert authenticate(s, "alice", "a long enough secret").role == "labeler"
    assert runner.invoke(main, ["dashboard", "users", "set-active", "alice", "false", *flags]).exit_code == 0
    listed = json.loads(runner.invoke(main, ["dashboard", "users", "list", *flags]).output)
    assert listed[0]["active"] is False
    db.dispose()


def test_settings_reach_the_streamlit_process_as_env(tmp_path: Path) -> None:
    settings = DashboardSettings(data_dir=tmp_path, es_docs_alias="x-docs", dashboard_session_idle=60)
    env = settings.to_env()
    assert env["RISKSTREAM_ES_DOCS_ALIAS"] == "x-docs" and env["RISKSTREAM_DASHBOARD_SESSION_IDLE"] == "60.0"
    rebuilt = DashboardSettings(**{k.removeprefix("RISKSTREAM_").lower(): v for k, v in env.items()})
    assert rebuilt == settings

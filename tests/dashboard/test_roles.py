"""Role enforcement in the data layer, against the real SQLite store.

Refusals happen before Elasticsearch is touched, so these tests give the data layer no ES client at all: a
check that came too late would crash on it instead of raising PermissionDeniedError.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from dashboard.auth import CurrentUser, PermissionDenied, authenticate
from dashboard.data import DataLayer
from riskstream.db import Database
from schemas.db import AlertRuleRow, LabelRow, User
from tests.dashboard.conftest import PASSWORD


def layer(db: Database) -> DataLayer:
    return DataLayer(db, None, docs_alias="unused-docs", alerts_alias="unused-alerts")


def test_viewer_cannot_label_or_see_the_queue(db: Database, users: dict[str, CurrentUser]) -> None:
    data = layer(db)
    with pytest.raises(PermissionDenied, match="labeler role required"):
        data.save_label(users["viewer"], "doc-1", "news_sentiment", "negative")
    with pytest.raises(PermissionDenied):
        data.labeling_queue(users["viewer"], "news_sentiment")
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(LabelRow)) == 0


@pytest.mark.parametrize("role", ["viewer", "labeler"])
def test_only_admins_manage_users_and_rules(db: Database, users: dict[str, CurrentUser], role: str) -> None:
    data = layer(db)
    who = users[role]
    with pytest.raises(PermissionDenied, match="admin role required"):
        data.add_user(who, "mallory", PASSWORD, "admin")
    with pytest.raises(PermissionDenied):
        data.set_user_role(who, who.username, "admin")  # no self-promotion
    with pytest.raises(PermissionDenied):
        data.list_users(who)
    with pytest.raises(PermissionDenied):
        data.save_rule(who, {"id": "r", "name": "r", "threshold": 1})
    with db.session() as s:
        assert s.scalars(select(User).where(User.username == "mallory")).first() is None
        assert s.get(User, who.id).role == role  # type: ignore[union-attr]
        assert s.scalar(select(func.count()).select_from(AlertRuleRow)) == 0


def test_admin_manages_users_and_rules(db: Database, users: dict[str, CurrentUser]) -> None:
    data = layer(db)
    admin = users["admin"]
    data.add_user(admin, "newbie", PASSWORD, "labeler")
    with db.session() as s:
        assert authenticate(s, "newbie", PASSWORD).role == "labeler"
    assert {u["username"] for u in data.list_users(admin)} == {"viewer1", "labeler1", "admin1", "newbie"}
    assert all("password_hash" not in u for u in data.list_users(admin))
    rule = data.save_rule(admin, {"id": "burst", "name": "Burst", "threshold": 10, "window": "5m"})
    rules, invalid = data.list_rules(admin)
    assert [r.id for r in rules] == [rule.id] and invalid == []
    data.set_rule_enabled(admin, "burst", False)
    assert data.list_rules(admin)[0][0].enabled is False
    with pytest.raises(ValueError, match="invalid"):
        data.save_rule(admin, {"id": "bad", "name": "Bad", "threshold": 10, "window": "soon"})
    with pytest.raises(ValueError, match="own"):
        data.set_user_active(admin, admin.username, False)


def test_role_changes_and_deactivation_apply_to_open_sessions(db: Database, users: dict[str, CurrentUser]) -> None:
    data = layer(db)
    labeler = users["labeler"]  # what the browser session holds
    data.set_user_role(users["admin"], labeler.username, "viewer")
    with pytest.raises(PermissionDenied, match="you are viewer"):
        data.save_label(labeler, "doc-1", "news_sentiment", "negative")
    data.set_user_active(users["admin"], users["viewer"].username, False)
    with pytest.raises(PermissionDenied, match="disabled"):
        data.require(users["viewer"], "viewer")
    forged = CurrentUser(id=users["viewer"].id, username=users["viewer"].username, role="admin")
    data.set_user_active(users["admin"], users["viewer"].username, True)
    with pytest.raises(PermissionDenied):  # the role claimed by the caller is ignored; the store decides
        data.list_users(forged)


def test_task_contract_matches_modeling() -> None:
    from dashboard import data
    from riskstream import modeling

    assert {k: tuple(v) for k, v in data.TASKS.items()} == {k: tuple(v) for k, v in modeling.TASKS.items()}
    assert data.SENTIMENT_LABELS == modeling.SENTIMENT_LABELS

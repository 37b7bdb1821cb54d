"""The data layer against the real Elasticsearch node and the real SQL store: search, alerts, risk picture,
the labeling queue and labels; plus a Streamlit AppTest of the login page."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import streamlit as st
from sqlalchemy import select

from dashboard.auth import CurrentUser
from dashboard.cli import APP
from dashboard.data import DataLayer, NotFoundError
from riskstream.db import Database
from riskstream.es import make_client
from riskstream.settings import CommonSettings
from schemas.db import LabelRow
from schemas.es import ensure_templates, index_for
from schemas.records import Alert, Entity, Prediction, ScoredDocument
from tests.dashboard.conftest import PASSWORD, add_user

pytestmark = pytest.mark.services

NOW = datetime.now(tz=UTC)


def doc(
    doc_id: str, uncertainty: float, *, channel: str = "news", sentiment: str = "negative", **kw: Any
) -> ScoredDocument:
    return ScoredDocument(
        id=doc_id,
        channel=channel,  # type: ignore[arg-type]
        source="wire",
        text=kw.pop("text", f"Quarterly results of {doc_id} disappoint investors"),
        published_at=NOW - timedelta(hours=1),
        ingested_at=kw.pop("ingested_at", NOW - timedelta(minutes=30)),
        scored_at=NOW,
        sentiment=Prediction(label=sentiment, score=0.55, margin=0.1),
        topic=Prediction(label="Earnings", score=0.6),
        model_version="v-42",
        risk_score=0.8 if sentiment == "negative" else 0.1,
        uncertainty=uncertainty,
        entities=[Entity(type="cashtag", value=v) for v in kw.pop("entities", ("$ACME",))],
        **kw,
    )


@pytest.fixture
def env(settings: CommonSettings) -> Iterator[tuple[DataLayer, Database, Any]]:
    es = make_client(settings)
    ensure_templates(es, settings.es_docs_alias, settings.es_alerts_alias)
    docs = [
        doc("d-low", 0.10),
        doc("d-high", 0.90),
        doc("d-mid", 0.50, sentiment="positive", text="Bank praised for excellent mobile app"),
        doc("d-old", 0.99, ingested_at=NOW - timedelta(days=30)),
        doc("cs-1", 0.95, channel="customer_service", entities=()),
    ]
    for d in docs:
        es.index(index=index_for(settings.es_docs_alias, d.ingested_at), id=d.id, document=d.model_dump(mode="json"))
    start = NOW.replace(minute=0, second=0, microsecond=0)
    alert = Alert(id="rule-x-1", rule_id="rule-x", rule_name="Burst", severity="critical", window_start=start,
                  window_end=start + timedelta(minutes=15), value=0.9, threshold=0.6, doc_count=4,
                  group={"entity": "$ACME"})  # fmt: skip
    es.index(index=index_for(settings.es_alerts_alias, start), id=alert.id, document=alert.model_dump(mode="json"))
    es.indices.refresh(index=f"{settings.es_docs_alias},{settings.es_alerts_alias}")
    db = Database(settings.db_url)
    yield DataLayer(db, es, docs_alias=settings.es_docs_alias, alerts_alias=settings.es_alerts_alias), db, es
    db.dispose()
    es.close()


def test_queue_orders_by_uncertainty_and_skips_what_this_user_labeled(env: tuple[DataLayer, Database, Any]) -> None:
    data, db, _ = env
    ana = add_user(db, "ana", "labeler")
    ben = add_user(db, "ben", "labeler")
    queue = data.labeling_queue(ana, "news_sentiment", hours=48)
    assert [q.doc_id for q in queue] == ["d-high", "d-mid", "d-low"]  # news only, recent only, most uncertain first
    assert queue[0].options == ("negative", "neutral", "positive") and queue[0].predicted_label == "negative"

    record = data.save_label(ana, "d-high", "news_sentiment", "neutral")
    assert record.labeled_by == "ana"
    with db.session() as s:
        row = s.scalars(select(LabelRow)).one()
    assert (row.doc_id, row.task, row.label, row.labeled_by) == ("d-high", "news_sentiment", "neutral", "ana")
    assert row.model_version == "v-42" and row.predicted_label == "negative"
    assert row.text == "Quarterly results of d-high disappoint investors"

    assert [q.doc_id for q in data.labeling_queue(ana, "news_sentiment", hours=48)] == ["d-mid", "d-low"]
    assert next(q.doc_id for q in data.labeling_queue(ben, "news_sentiment", hours=48)) == "d-high"  # ben still sees it
    assert next(q.doc_id for q in data.labeling_queue(ana, "news_topic", hours=48)) == "d-high"  # other task
    assert [q.doc_id for q in data.labeling_queue(ana, "cs_sentiment", hours=48)] == ["cs-1"]

    data.save_label(ana, "d-high", "news_sentiment", "negative")  # changing one's mind replaces, not duplicates
    with db.session() as s:
        assert [r.label for r in s.scalars(select(LabelRow))] == ["negative"]


def test_bad_labels_are_refused(env: tuple[DataLayer, Database, Any]) -> None:
    data, db, _ = env
    ana = add_user(db, "ana", "labeler")
    with pytest.raises(ValueError, match="not a label"):
        data.save_label(ana, "d-low", "news_sentiment", "catastrophic")
    with pytest.raises(ValueError, match="for customer_service documents"):
        data.save_label(ana, "d-low", "cs_sentiment", "negative")
    with pytest.raises(NotFoundError):
        data.save_label(ana, "no-such-doc", "news_sentiment", "negative")
    with db.session() as s:
        assert s.scalars(select(LabelRow)).first() is None


def test_viewer_search_alerts_and_risk_picture(env: tuple[DataLayer, Database, Any]) -> None:
    data, db, _ = env
    viewer = add_user(db, "vic", "viewer")
    labeler = add_user(db, "lea", "labeler")
    data.save_label(labeler, "d-mid", "news_sentiment", "positive")
    hits = data.search(viewer, "mobile app")
    assert [h["id"] for h in hits] == ["d-mid"]
    assert hits[0]["labels"] == [{"task": "news_sentiment", "label": "positive", "by": "lea"}]
    assert hits[0]["model_version"] == "v-42"
    assert {h["id"] for h in data.search(viewer, "", channel="customer_service")} == {"cs-1"}
    assert {h["id"] for h in data.search(viewer, "", sentiment="negative", hours=24)} == {"d-low", "d-high", "cs-1"}
    assert [a["id"] for a in data.alerts(viewer, hours=24)] == ["rule-x-1"]
    assert data.alerts(viewer, hours=24, severity="info") == []
    overview = data.risk_overview(viewer, hours=24)
    assert overview["total"] == 4
    by_channel = {row["channel"]: row["docs"] for row in overview["series"]}
    assert sum(by_channel.values()) == 4 and by_channel["news"] == 3
    acme = overview["entities"][0]
    assert (acme["entity"], acme["docs"], acme["negative"]) == ("$ACME", 3, 2)


def _start_app(settings: CommonSettings, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The Streamlit app under AppTest, configured like `riskstream dashboard run` does (settings as env)."""
    from streamlit.testing.v1 import AppTest

    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    return AppTest.from_file(str(APP), default_timeout=30).run()


def test_login_page_refuses_wrong_password_and_admits_the_right_one(
    settings: CommonSettings, env: tuple[DataLayer, Database, Any], monkeypatch: pytest.MonkeyPatch
) -> None:

    _, db, _ = env
    add_user(db, "ana", "labeler")
    app = _start_app(settings, monkeypatch)
    assert not app.exception
    app.text_input[0].input("ana")
    app.text_input[1].input("wrong password!")
    app.button[0].click().run()
    assert any("invalid username or password" in e.value for e in app.error)
    assert "auth_session" not in app.session_state
    app.text_input[1].input(PASSWORD)
    app.button[0].click().run()
    assert not app.exception
    assert isinstance(app.session_state["auth_session"].user, CurrentUser)
    assert any("Logged in as" in m.value for m in app.sidebar.markdown)
    assert "Labeling queue" in app.sidebar.radio[0].options and "Admin" not in app.sidebar.radio[0].options
    st.cache_resource.clear()


def test_every_page_renders_and_a_label_click_lands_in_the_store(
    settings: CommonSettings, env: tuple[DataLayer, Database, Any], monkeypatch: pytest.MonkeyPatch
) -> None:

    _, db, _ = env
    add_user(db, "boss", "admin")
    app = _start_app(settings, monkeypatch)
    app.text_input[0].input("boss")
    app.text_input[1].input(PASSWORD)
    app.button[0].click().run()
    for page in ("Live risk", "Alerts", "Search", "Admin", "Labeling queue"):
        app.sidebar.radio[0].set_value(page).run()
        assert not app.exception, (page, [e.value for e in app.exception])
        assert not app.error, (page, [e.value for e in app.error])
    # the queue's first document is the most uncertain news document: d-high; its first button is "negative"
    first = next(b for b in app.button if b.label == "neutral")
    first.click().run()
    assert not app.exception
    with db.session() as s:
        row = s.scalars(select(LabelRow)).one()
    assert (row.doc_id, row.task, row.label, row.labeled_by) == ("d-high", "news_sentiment", "neutral", "boss")
    st.cache_resource.clear()

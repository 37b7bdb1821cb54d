"""The Streamlit dashboard: login, live risk picture, alerts, search, labeling queue, admin.

Started by ``riskstream dashboard run``, which passes its settings to this process as ``RISKSTREAM_*`` variables;
they are read once per server process (``resources()``). Pages only call :mod:`dashboard.data`, which checks the
logged-in user's role against the store on every call; the navigation merely hides what a role cannot use.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st
from elastic_transport import TransportError
from elasticsearch import ApiError

from dashboard.auth import AuthError, LoginSession, LoginThrottle, PermissionDeniedError, authenticate
from dashboard.data import TASKS, DataLayer, NotFoundError
from dashboard.settings import DashboardSettings
from dashboard.text import md

PAGES: dict[str, str] = {
    "Live risk": "viewer",
    "Alerts": "viewer",
    "Search": "viewer",
    "Labeling queue": "labeler",
    "Admin": "admin",
}
RANK = {"viewer": 0, "labeler": 1, "admin": 2}
SESSION_KEY = "auth_session"


@st.cache_resource
def resources() -> tuple[DashboardSettings, DataLayer, LoginThrottle]:
    from riskstream.db import Database
    from riskstream.es import make_client

    settings = DashboardSettings()
    data = DataLayer(
        Database(settings.db_url),
        make_client(settings),
        docs_alias=settings.es_docs_alias,
        alerts_alias=settings.es_alerts_alias,
    )
    throttle = LoginThrottle(settings.dashboard_max_failures, settings.dashboard_lockout)
    return settings, data, throttle


def login_page(settings: DashboardSettings, data: DataLayer, throttle: LoginThrottle) -> None:
    st.title("riskstream")
    with st.form("login_form"):
        username = st.text_input("Username")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        try:
            with data.db.session() as session:
                user = authenticate(session, username.strip(), password, throttle=throttle)
        except AuthError as exc:
            st.error(str(exc))
            return
        st.session_state[SESSION_KEY] = LoginSession(user=user, idle_seconds=settings.dashboard_session_idle)
        st.rerun()


def live_risk(data: DataLayer, session: LoginSession) -> None:
    st.header("Live risk")
    hours = st.select_slider("Last hours", options=[1, 3, 6, 12, 24, 48, 72, 168], value=24)
    interval = "5m" if hours <= 3 else "1h" if hours <= 72 else "6h"
    overview = data.risk_overview(session.user, hours=hours, interval=interval)
    st.metric("Documents", overview["total"])
    series = pd.DataFrame(overview["series"])
    if series.empty:
        st.info("No scored documents in this period.")
        return
    series["time"] = pd.to_datetime(series["time"])
    left, right = st.columns(2)
    with left:
        st.subheader("Documents by channel")
        st.line_chart(series.pivot_table(index="time", columns="channel", values="docs", fill_value=0))
    with right:
        st.subheader("Mean risk by channel")
        st.line_chart(series.pivot_table(index="time", columns="channel", values="mean_risk"))
    topics = pd.DataFrame(overview["topics"])
    if not topics.empty:
        st.subheader("Topics: volume and mean risk")
        st.bar_chart(topics.set_index("topic")["mean_risk"])
        st.dataframe(topics, hide_index=True, width="stretch")
    entities = pd.DataFrame(overview["entities"])
    if not entities.empty:
        st.subheader("Most negative entities")
        st.dataframe(entities, hide_index=True, width="stretch")


def alerts_page(data: DataLayer, session: LoginSession) -> None:
    st.header("Alerts")
    hours = st.select_slider("Last hours", options=[1, 6, 24, 72, 168, 720], value=24)
    severity = st.selectbox("Severity", ["any", "critical", "warning", "info"])
    rows = data.alerts(session.user, hours=hours, severity=None if severity == "any" else severity)
    if not rows:
        st.info("No alerts in this period.")
        return
    frame = pd.DataFrame(rows)[
        ["window_start", "severity", "rule_name", "value", "threshold", "doc_count", "group", "message", "id"]
    ]
    st.dataframe(frame, hide_index=True, width="stretch")


def search_page(data: DataLayer, session: LoginSession) -> None:
    st.header("Search")
    text = st.text_input('Search text (simple query syntax: +must -not "phrase")')
    cols = st.columns(4)
    channel = cols[0].selectbox("Channel", ["any", "news", "customer_service"])
    sentiment = cols[1].selectbox("Sentiment", ["any", "negative", "neutral", "positive"])
    topic = cols[2].text_input("Topic (exact)")
    entity = cols[3].text_input("Entity (e.g. $AAPL)")
    hits = data.search(
        session.user,
        text,
        channel=None if channel == "any" else channel,
        sentiment=None if sentiment == "any" else sentiment,
        topic=topic.strip() or None,
        entity=entity.strip() or None,
        size=50,
    )
    st.caption(f"{len(hits)} results")
    for hit in hits:
        title = hit.get("title") or hit["text"][:100]
        with st.expander(f"\\[{hit['channel']}\\] {md(title)}"):
            st.text(hit["text"])
            st.markdown(
                f"sentiment **{md(hit['sentiment']['label'])}** ({hit['sentiment']['score']:.2f}) · "
                f"topic **{md(hit['topic']['label'])}** ({hit['topic']['score']:.2f}) · "
                f"risk {hit.get('risk_score') or 0:.2f} · model {md(hit['model_version'])} · source {md(hit['source'])}"
            )
            if hit["labels"]:
                st.markdown(
                    "Labels: " + ", ".join(md(f"{lb['task']}={lb['label']} ({lb['by']})") for lb in hit["labels"])
                )


def labeling_page(data: DataLayer, session: LoginSession) -> None:
    st.header("Labeling queue")
    task = st.selectbox("Task", list(TASKS))
    hours = st.select_slider("Documents from the last hours", options=[6, 24, 72, 168, 720], value=72)
    st.caption(f"You have labeled {data.my_label_count(session.user)} documents.")
    items = data.labeling_queue(session.user, task, size=10, hours=hours)
    if not items:
        st.success("Nothing left to label for this task.")
        return
    for item in items:
        with st.container(border=True):
            if item.title:
                st.markdown(f"**{md(item.title)}**")
            st.text(item.text)
            st.caption(
                f"model {md(item.model_version)} predicts **{md(item.predicted_label)}** "
                f"({item.predicted_score:.2f}); uncertainty {item.uncertainty:.2f} · {md(item.source)} · "
                f"{md(item.ingested_at)}"
            )
            chosen: str | None = None
            if len(item.options) <= 5:
                buttons = st.columns(len(item.options))
                for col, option in zip(buttons, item.options, strict=True):
                    if col.button(option, key=f"{task}:{item.doc_id}:{option}"):
                        chosen = option
            else:
                default = item.options.index(item.predicted_label) if item.predicted_label in item.options else 0
                option = st.selectbox("Label", item.options, index=default, key=f"{task}:{item.doc_id}:sel")
                if st.button("Save", key=f"{task}:{item.doc_id}:save"):
                    chosen = option
            if chosen is not None:
                data.save_label(session.user, item.doc_id, task, chosen)
                st.toast(md(f"labeled {item.doc_id}: {chosen}"))
                st.rerun()


def admin_page(data: DataLayer, session: LoginSession) -> None:
    st.header("Admin")
    users_tab, rules_tab = st.tabs(["Users", "Alert rules"])
    with users_tab:
        st.dataframe(pd.DataFrame(data.list_users(session.user)), hide_index=True, width="stretch")
        with st.form("add_user", clear_on_submit=True):
            st.subheader("Add a user")
            name = st.text_input("Username")
            role = st.selectbox("Role", ["viewer", "labeler", "admin"])
            password = st.text_input("Initial password (10+ characters)", type="password")
            if st.form_submit_button("Add"):
                data.add_user(session.user, name.strip(), password, role)
                st.success(f"added {name}")
        with st.form("change_user"):
            st.subheader("Change a user")
            name = st.text_input("Username", key="chg_name")
            action = st.selectbox("Action", ["deactivate", "activate", "make viewer", "make labeler", "make admin"])
            if st.form_submit_button("Apply"):
                if action in ("deactivate", "activate"):
                    data.set_user_active(session.user, name.strip(), action == "activate")
                else:
                    data.set_user_role(session.user, name.strip(), action.split()[1])
                st.success("done")
    with rules_tab:
        rules, invalid = data.list_rules(session.user)
        for err in invalid:
            st.warning(err)
        for rule in rules:
            with st.expander(f"{'🟢' if rule.enabled else '⚪'} {md(rule.id)}: {md(rule.name)}"):
                st.code(json.dumps(rule.model_dump(mode="json"), indent=2), language="json")
                c1, c2, c3 = st.columns(3)
                if c1.button("Disable" if rule.enabled else "Enable", key=f"tog:{rule.id}"):
                    data.set_rule_enabled(session.user, rule.id, not rule.enabled)
                    st.rerun()
                if c2.button("Mute 1 h", key=f"mute:{rule.id}"):
                    data.mute_rule(session.user, rule.id, datetime.now(tz=UTC) + timedelta(hours=1))
                    st.toast(f"{rule.id} muted for an hour")
                if c3.button("Unmute", key=f"unmute:{rule.id}"):
                    data.mute_rule(session.user, rule.id, None)
        with st.form("add_rule"):
            st.subheader("Add or replace a rule (JSON)")
            text = st.text_area("Definition", height=220, value=_EXAMPLE_RULE)
            if st.form_submit_button("Validate and save"):
                try:
                    definition = json.loads(text)
                except json.JSONDecodeError as exc:
                    st.error(f"not JSON: {exc}")
                else:
                    saved = data.save_rule(session.user, definition)
                    st.success(f"saved rule {saved.id}")


_EXAMPLE_RULE = json.dumps(
    {
        "id": "negative-entity-burst",
        "name": "Negative burst on an entity",
        "channel": "news",
        "window": "15m",
        "metric": "negative_share",
        "group_by": ["entity"],
        "threshold": 0.6,
        "min_docs": 5,
        "severity": "warning",
        "silence": "1h",
        "webhooks": [],
    },
    indent=2,
)

RENDER: dict[str, Any] = {
    "Live risk": live_risk,
    "Alerts": alerts_page,
    "Search": search_page,
    "Labeling queue": labeling_page,
    "Admin": admin_page,
}


def main() -> None:
    st.set_page_config(page_title="riskstream", layout="wide")
    settings, data, throttle = resources()
    session: LoginSession | None = st.session_state.get(SESSION_KEY)
    if session is not None and not session.touch():
        del st.session_state[SESSION_KEY]
        st.warning("Your session expired; please log in again.")
        session = None
    if session is None:
        login_page(settings, data, throttle)
        return
    try:
        user = data.require(session.user, "viewer")  # role changes and deactivation apply immediately
    except PermissionDeniedError as exc:
        del st.session_state[SESSION_KEY]
        st.error(str(exc))
        return
    with st.sidebar:
        st.markdown(f"Logged in as **{md(user.username)}** ({user.role})")
        if st.button("Log out"):
            del st.session_state[SESSION_KEY]
            st.rerun()
        allowed = [p for p, role in PAGES.items() if RANK[user.role] >= RANK[role]]
        page = st.radio("Page", allowed)
    try:
        RENDER[page](data, session)
    except PermissionDeniedError as exc:
        st.error(f"Not allowed: {exc}")
    except (ValueError, NotFoundError) as exc:
        st.error(str(exc))
    except (TransportError, ApiError) as exc:
        st.error(f"Elasticsearch is unavailable or refused the query: {type(exc).__name__}. Try again shortly.")


main()

"""Settings of the dashboard (``riskstream dashboard ...``); every field is also a CLI flag."""

from __future__ import annotations

from pydantic import Field

from riskstream.settings import CommonSettings


class DashboardSettings(CommonSettings):
    dashboard_host: str = Field(
        default="127.0.0.1",
        description="Address Streamlit listens on: loopback keeps it private to this machine; put a TLS proxy in "
        "front before binding anything wider.",
    )
    dashboard_port: int = Field(default=8501, description="Port Streamlit listens on.")
    dashboard_session_idle: float = Field(
        default=1800.0,
        description="Seconds of inactivity after which a login expires: shorter is safer on shared screens, "
        "asks for the password more often.",
    )
    dashboard_max_failures: int = Field(
        default=5,
        description="Failed logins per username (per dashboard process) before further attempts are refused for "
        "dashboard_lockout seconds: lower slows password guessing, locks out typo-prone users sooner.",
    )
    dashboard_lockout: float = Field(
        default=300.0, description="Seconds a username stays locked after too many failures."
    )
    dashboard_refresh: float = Field(
        default=30.0, description="Seconds the live pages cache ES answers: lower is fresher, costs more queries."
    )

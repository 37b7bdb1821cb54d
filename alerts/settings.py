"""Settings of the alert engine (``riskstream alerts ...``); every field is also a CLI flag."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from riskstream.settings import CommonSettings


class AlertSettings(CommonSettings):
    alerts_app_id: str = Field(
        default="riskstream-alerts",
        description="Faust application id = Kafka consumer group; engines sharing it split the partitions. "
        "Changing it restarts consumption from the latest offsets and loses open windows.",
    )
    alerts_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a new engine (new app id) starts on the scored topic: earliest evaluates the retained "
        "history (alerts, and webhooks, for past windows; ids are stable so nothing fires twice), latest only "
        "new documents. A restarted engine always resumes from its committed offsets.",
    )
    alerts_rules_file: Path | None = Field(
        default=None,
        description="Optional JSON/YAML file of rules loaded besides the SQL store's rules (validated at load; "
        "an invalid file stops the engine rather than running with half the rules).",
    )
    alerts_rules_refresh: float = Field(
        default=30.0,
        description="Seconds between reloads of the rules from the store: lower picks up edits sooner, "
        "costs a query each time.",
    )
    alerts_lateness: float = Field(
        default=300.0,
        description="Seconds a window stays open after its end for late documents: higher tolerates slower "
        "sources, delays alerts evaluated at window close by as much.",
    )
    alerts_idle_close: float = Field(
        default=10.0,
        description="Seconds without new documents after which windows are closed on the wall clock (end + "
        "lateness before now): keeps alerts flowing on a quiet stream.",
    )
    alerts_gap_repair_max: int = Field(
        default=10_000,
        ge=0,
        description="Most offsets of one scored partition the engine reads back itself when the stream skipped "
        "them (a known faust race at restarts and rebalances); a larger jump is taken as a deliberate offset "
        "reset and logged, not repaired. 0 never repairs.",
    )
    alerts_gap_check: float = Field(
        default=10.0,
        ge=0,
        description="Seconds between comparisons of the offset ledger with the group's committed offsets: records "
        "committed past without being counted are read back even when no later record arrives. 0 turns it off "
        "(gaps are then found by the next record of their partition only).",
    )
    alerts_stall_timeout: float = Field(
        default=120.0,
        ge=0,
        description="Seconds a scored partition may hold records past the engine's offset ledger without the stream "
        "delivering one before the engine logs its consumer's state and seeks back to them; a second stall at "
        "the same offset exits with code 75 for its supervisor to restart it (a faust stream can come out of a "
        "start or rebalance delivering nothing). A record being "
        "counted (retrying an Elasticsearch outage, say) is progress, not a stall. Lower recovers sooner; 0 turns "
        "the watch off.",
    )
    alerts_stop_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds the engine's shutdown (after a signal, a crashed agent or a stall) may take before the "
        "process exits anyway, with code 1 (75 after a stall): faust can hang while stopping, waiting on an "
        "in-flight record whose agent crashed. Nothing is lost by the forced exit: offsets of records not yet "
        "counted are not committed, and the offset ledger skips those already counted.",
    )
    webhook_secret: SecretStr = Field(
        default=SecretStr(""),
        description="HMAC-SHA256 key that signs webhook bodies (receivers verify with the same key). "
        "Required to send webhooks; never logged.",
    )
    webhook_allow: list[str] = Field(
        default_factory=list,
        description='Hosts or CIDRs webhooks may reach although private/loopback (e.g. ["127.0.0.1/32"] for '
        "development). Everything else private, loopback, link-local or reserved is refused.",
    )
    webhook_timeout: float = Field(
        default=5.0, description="Seconds per webhook request: longer tolerates slow receivers, stalls the loop."
    )
    webhook_max_attempts: int = Field(
        default=6, description="Attempts per delivery before it is marked failed (retries use exponential backoff)."
    )
    webhook_backoff: float = Field(
        default=5.0,
        description="Seconds before the first retry, doubled per attempt (capped at 1 h): lower retries "
        "sooner, hammers a struggling receiver more.",
    )
    webhook_poll: float = Field(
        default=2.0, description="Seconds between scans of the delivery queue: lower delivers sooner, more queries."
    )
    alerts_metrics_port: int = Field(
        default=0,
        description="Serve Prometheus metrics (documents, alerts fired, deliveries, dead letters, open windows) on "
        "127.0.0.1:PORT; 0 turns the endpoint off.",
    )

"""The alert stream job: a faust-streaming app over ``topic_scored``.

Per scored document (event time = ``published_at``, else ``ingested_at``):

0. the offset ledger (``alerts/ledger.py``, kept in the state table) skips a record already counted and reads back
   records the stream skipped, so each document is counted once across restarts and rebalances;
1. decode and validate (a bad message goes to the dead-letter topic with the reason, never stops the job);
2. :class:`alerts.rules.Evaluator` counts it in its rules' windows (state in a changelog-backed faust Table, so
   a restart restores open windows and silences) and returns the alerts to fire;
3. each alert is indexed in Elasticsearch (``_id`` = alert id, monthly index from the window start), published
   to ``topic_alerts`` (key = alert id) and one delivery row per webhook target is queued in the SQL store.

Timers close windows of an idle stream, reload rules from the store, and run the delivery loop (signed
webhooks with the SSRF guard, retries with backoff from the store). The pure logic lives in ``rules.py``,
``windows.py``, ``webhooks.py`` and ``store.py``; this module only wires it to faust, Kafka, ES and SQL.

One engine per ``alerts_app_id`` (rules aggregate across every partition of the scored topic).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

import faust
import mode
from faust.tables.manager import TableManager
from faust.types import TP
from kafka.errors import KafkaError
from prometheus_client import Counter, Gauge, start_http_server
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_not_exception_type, wait_exponential

from alerts import store, webhooks
from alerts.ledger import Admission, OffsetLedger
from alerts.rules import Evaluator, Rule, event_time, load_rules_file
from alerts.settings import AlertSettings
from alerts.stall import StallWatch, next_to_count
from riskstream.db import Database
from riskstream.es import make_client
from riskstream.kafka_client import client_options, faust_credentials
from schemas.es import IndexLayoutError, ensure_templates, index_for
from schemas.records import Alert, DeadLetter, ScoredDocument
from schemas.topics import ensure_configured

log = logging.getLogger(__name__)
T = TypeVar("T")

DOCUMENTS = Counter("riskstream_alerts_documents_total", "Scored documents the alert engine evaluated.")
LATE = Counter("riskstream_alerts_late_documents_total", "Window assignments refused because the window had closed.")
DEAD_LETTERS = Counter("riskstream_alerts_dead_letters_total", "Messages sent to the dead-letter topic.", ["reason"])
FIRED = Counter("riskstream_alerts_fired_total", "Alerts fired.", ["rule", "severity"])
DELIVERIES = Counter("riskstream_alert_deliveries_total", "Webhook delivery attempts by outcome.", ["outcome"])
REDELIVERED = Counter(
    "riskstream_alerts_redelivered_total", "Scored records delivered again after being counted (skipped)."
)
REPAIRED = Counter(
    "riskstream_alerts_read_back_total", "Scored records the stream skipped, read back from the partition and counted."
)
HELD = Counter(
    "riskstream_alerts_held_total",
    "Scored records handed to the agent while its state table was being restored, held until the restore completed.",
)
STALLS = Counter(
    "riskstream_alerts_stalls_total",
    "Times the stream delivered nothing with records waiting, by the answer: seek back to them, or exit.",
    ["action"],
)
OPEN_WINDOWS = Gauge("riskstream_alerts_open_windows", "Windows currently open across all rules and groups.")


class WebhookNotConfiguredError(Exception):
    """A rule names webhooks but no signing secret is configured (permanent: unsigned sends are refused)."""


def broker_url(bootstrap: str) -> str:
    """``host:port,host2:port`` -> ``kafka://host:port;kafka://host2:port`` (faust's broker list)."""
    return ";".join(f"kafka://{b.strip()}" for b in bootstrap.split(",") if b.strip())


def read_offsets(
    client: dict[str, Any], topic: str, partition: int, start: int, stop: int, *, timeout: float = 60.0
) -> list[Any]:
    """The records of ``topic[partition]`` at offsets ``start`` to ``stop - 1``, read with a group-less consumer.

    Offsets with no record (transaction markers, compaction, retention) are passed over: reading ends when the
    position reaches ``stop``. Raises ``TimeoutError`` if it does not within ``timeout`` seconds.
    """
    from kafka import KafkaConsumer, TopicPartition

    tp = TopicPartition(topic, partition)
    consumer = KafkaConsumer(
        **client,  # where and how to connect (riskstream.kafka_client.client_options)
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # below the log start (retention): from what is left
        request_timeout_ms=15000,
    )
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while consumer.position(tp) < stop:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{partition}] offsets {start}-{stop - 1} took over {timeout}s")
            for record in consumer.poll(timeout_ms=500).get(tp, []):
                if start <= record.offset < stop:
                    records.append(record)
        return records
    finally:
        consumer.close()


class AlertEngine:
    """Everything the faust callbacks need, built once from settings."""

    def __init__(self, settings: AlertSettings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.es = make_client(settings)
        self.file_rules: list[Rule] = load_rules_file(settings.alerts_rules_file) if settings.alerts_rules_file else []
        self.allow = webhooks.AllowList.parse(settings.webhook_allow)
        self.http = webhooks.make_client(settings.webhook_timeout)
        self.policy = store.RetryPolicy(max_attempts=settings.webhook_max_attempts, base_delay=settings.webhook_backoff)
        self.muted: set[str] = set()
        self.last_event = time.monotonic()
        self.evaluator: Evaluator | None = None
        self._admin: Any = None  # kafka-python admin client of the gap check, opened on first use
        self._bounds: Any = None  # kafka-python consumer of the stall watch, opened on first use

    def committed_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The engine's consumer group's committed offsets (partitions without one are left out)."""
        from kafka import KafkaAdminClient, TopicPartition

        if self._admin is None:
            self._admin = KafkaAdminClient(**client_options(self.settings), client_id="riskstream-alerts-gap-check")
        try:
            group = self.settings.alerts_app_id
            offsets = self._admin.list_group_offsets({group: [TopicPartition(t, p) for t, p in partitions]})[group]
        except Exception:
            self._admin.close()
            self._admin = None  # reconnect next time
            raise
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    def partition_bounds(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
        """First and end offset of each partition (end = one past the last record), from a group-less consumer."""
        from kafka import KafkaConsumer, TopicPartition

        if self._bounds is None:
            self._bounds = KafkaConsumer(
                **client_options(self.settings), group_id=None, client_id="riskstream-alerts-stall-watch"
            )
        tps = [TopicPartition(t, p) for t, p in partitions]
        try:
            first = self._bounds.beginning_offsets(tps)
            end = self._bounds.end_offsets(tps)
        except Exception:
            self._bounds.close()
            self._bounds = None  # reconnect next time
            raise
        return {(tp.topic, tp.partition): (first[tp], end[tp]) for tp in tps}

    # ---- rules -------------------------------------------------------------------------------------------------

    def current_rules(self) -> list[Rule]:
        with self.db.session() as session:
            stored, errors = store.load_rules(session)
            self.muted = store.muted_rule_ids(session)
        for err in errors:
            log.error("skipping invalid rule: %s", err)
        by_id = {r.id: r for r in self.file_rules}
        by_id.update({r.id: r for r in stored})  # the store wins over the file for the same id
        return list(by_id.values())

    # ---- side effects of one alert -----------------------------------------------------------------------------

    def record(self, alert: Alert) -> None:
        """Index the alert and queue its webhooks (idempotent: same id, same index, unique deliveries)."""
        self.es.index(
            index=index_for(self.settings.es_alerts_alias, alert.window_start),
            id=alert.id,
            document=alert.model_dump(mode="json"),
        )
        assert self.evaluator is not None
        rule = self.evaluator.rules.get(alert.rule_id)
        targets = list(rule.webhooks) if rule else []
        if targets:
            with self.db.session() as session:
                self._ensure_rule_row(session, rule)
                store.enqueue(session, alert, targets)
                session.commit()

    def _ensure_rule_row(self, session: Any, rule: Rule | None) -> None:
        """File rules have no row yet; deliveries reference one (foreign key), so mirror it, disabled-safe."""
        from schemas.db import AlertRuleRow

        if rule is not None and session.get(AlertRuleRow, rule.id) is None:
            store.save_rule(session, rule, actor="rules-file")

    def send(self, target: str, payload: dict[str, Any], alert_id: str) -> int:
        secret = self.settings.webhook_secret.get_secret_value()
        if not secret:
            raise WebhookNotConfiguredError("webhook_secret is not set; refusing to send unsigned webhooks")
        return webhooks.send(self.http, target, payload, alert_id=alert_id, secret=secret, allow=self.allow)

    def deliver(self) -> store.DeliveryReport:
        return store.deliver_due(
            self.db.sessions,
            self.send,
            self.policy,
            permanent=(webhooks.BlockedTargetError, WebhookNotConfiguredError),
        )

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
        if self._bounds is not None:
            self._bounds.close()
        self.http.close()
        self.es.close()
        self.db.dispose()


def dead_letter(raw: bytes | None, key: bytes | None, reason: str, error: str, message: Any) -> DeadLetter:
    text: str | None
    try:
        text = raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        text = None
    import base64

    return DeadLetter(
        reason=reason,
        error=error[:2000],
        stage="alerts",
        source_topic=getattr(message, "topic", None),
        source_partition=getattr(message, "partition", None),
        source_offset=getattr(message, "offset", None),
        key=key.decode("utf-8", "replace") if key else None,
        payload=text,
        payload_b64=base64.b64encode(raw).decode() if raw is not None and text is None else None,
    )


def _retry_logger(alert_id: str) -> Callable[[RetryCallState], None]:
    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning("alert %s not recorded yet (attempt %d): %r", alert_id, state.attempt_number, exc)

    return log_retry


def parse_scored(raw: bytes | None) -> ScoredDocument:
    if raw is None:
        raise ValueError("empty message")
    return ScoredDocument.model_validate_json(raw)


EXIT_STALLED = 75  # EX_TEMPFAIL: a fresh start is the remedy (a crashed agent exits with 1)


class StreamStalledError(RuntimeError):
    """The stream delivered nothing for ``alerts_stall_timeout`` seconds with records waiting."""


def consumer_state(app: faust.App) -> str:
    """What faust's consumer and its aiokafka consumer say about delivery, for the log of a stall (read-only).

    It reads both libraries' internals; should they change, the report says so instead of failing the watch."""
    try:
        return _consumer_state(app)
    except Exception as exc:
        return f"unavailable ({exc!r})"


def _consumer_state(app: faust.App) -> str:
    consumer: Any = app.consumer
    parts = {
        "assigned": sorted(map(tuple, consumer.assignment())),
        "active": sorted(map(tuple, consumer._active_partitions or ())),
        "paused": sorted(map(tuple, consumer._paused_partitions)),
        "buffered": sorted(map(tuple, consumer._buffered_partitions)),
        "flow_active": consumer.flow_active,
        "flow_control_active": app.flow_control.is_active(),
        "read_offsets": {f"{tp.topic}[{tp.partition}]": off for tp, off in consumer._read_offset.items()},
        "unacked": len(consumer._unacked_messages),
    }
    try:
        inner = consumer._thread._consumer
        subscription = inner._subscription.subscription
        states = {}
        for tp in sorted(inner.assignment()):
            state = subscription.assignment.state_value(tp)
            states[f"{tp.topic}[{tp.partition}]"] = {
                "position": state.position if state.has_valid_position else None,
                "paused": state.paused,
                "highwater": state.highwater,
            }
        parts["aiokafka"] = states
    except Exception as exc:  # reported on its own, so faust's part still shows
        parts["aiokafka"] = repr(exc)
    fetcher = getattr(app, "_fetcher", None)
    parts["fetcher"] = {
        "started": getattr(fetcher, "_started", None) is not None and fetcher._started.is_set(),  # type: ignore[union-attr]
        "stopped": getattr(fetcher, "_stopped", None) is not None and fetcher._stopped.is_set(),  # type: ignore[union-attr]
    }
    return json.dumps(parts, default=str)


def build_app(settings: AlertSettings, engine: AlertEngine, partitions: int) -> faust.App:
    """The faust app: one agent on the scored topic, a state table, and timers for the gap check, the stall watch,
    idle windows, the rules and the webhook deliveries (the index templates are already installed:
    :func:`install_templates`)."""
    datadir = settings.data_dir / "alerts" / settings.alerts_app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.alerts_app_id,
        broker=broker_url(settings.kafka_bootstrap),
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        topic_partitions=partitions,
        web_enabled=False,
        autodiscover=False,
        consumer_auto_offset_reset=settings.alerts_offset_reset,
        producer_acks=-1,
    )
    scored = app.topic(settings.topic_scored, key_serializer="raw", value_serializer="raw")
    alerts_topic = app.topic(settings.topic_alerts, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.topic_dlq, key_serializer="raw", value_serializer="raw")
    table = app.Table(
        "state",
        partitions=partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        use_partitioner=True,  # windows are keyed by rule + group, not by the document's partition
    )
    lateness = timedelta(seconds=settings.alerts_lateness)
    ledger = OffsetLedger(table, max_repair=settings.alerts_gap_repair_max)

    async def in_thread(fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    def evaluator() -> Evaluator:
        if engine.evaluator is None:
            engine.evaluator = Evaluator(engine.current_rules(), table, lateness=lateness)
        return engine.evaluator

    async def emit(alerts: list[Alert]) -> None:
        for alert in alerts:
            if alert.rule_id in engine.muted:
                log.info("alert %s not sent: rule %s is muted", alert.id, alert.rule_id)
                continue
            # The window is already marked as fired in the state table, so an alert must not be dropped on an
            # Elasticsearch, database or Kafka hiccup: retry (the stream waits, nothing is lost) until it goes out.
            async for attempt in AsyncRetrying(
                wait=wait_exponential(multiplier=0.5, max=30),
                before_sleep=_retry_logger(alert.id),
                reraise=True,
            ):
                with attempt:
                    await in_thread(partial(engine.record, alert))
                    await alerts_topic.send(key=alert.id.encode(), value=alert.model_dump_json().encode())
            FIRED.labels(alert.rule_id, alert.severity).inc()
            log.info("alert %s fired: %s", alert.id, alert.message)

    async def handle(raw: bytes | None, key: bytes | None, origin: Any) -> None:
        """One record: decode, count in its windows, emit what fired; a bad record goes to the dead-letter topic."""
        try:
            doc = parse_scored(raw)
        except (ValidationError, ValueError) as exc:
            kinds = {e["type"] for e in exc.errors()} if isinstance(exc, ValidationError) else set()
            reason = "invalid_json" if "json_invalid" in kinds else "schema_violation"
            letter = dead_letter(raw, key, reason, str(exc), origin)
            DEAD_LETTERS.labels(reason).inc()
            await dlq.send(key=key, value=letter.model_dump_json().encode())
            return
        engine.last_event = time.monotonic()
        ev = evaluator()
        late_before = ev.stats.late
        fired = ev.add(doc)
        DOCUMENTS.inc()
        late = ev.stats.late - late_before
        LATE.inc(late)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "document %s (offset %s:%s, event time %s): %d late window(s), %d alert(s), watermark %s",
                doc.id,
                origin.partition,
                origin.offset,
                event_time(doc).isoformat(),
                late,
                len(fired),
                ev.watermark,
            )
        await emit(fired)

    async def read_back(topic: str, partition: int, missing: range) -> list[Any]:
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.5, max=30),
            before_sleep=_retry_logger(f"{topic}[{partition}] offsets {missing.start}-{missing.stop - 1}"),
            reraise=True,
        ):
            with attempt:
                return await in_thread(
                    partial(read_offsets, client_options(settings), topic, partition, missing.start, missing.stop)
                )
        raise AssertionError("unreachable")  # pragma: no cover

    delivered = 0  # records the stream handed to the agent (the stall watch's sign of life)

    # The agent and the gap check both count records; the lock keeps them from counting the same offsets twice.
    counting = asyncio.Lock()

    async def repair(topic: str, partition: int, missing: range, where: str) -> None:
        """Read ``missing`` back from the partition and count it, in order; the mark moves past the whole range
        (offsets without a record, such as transaction markers, compaction or retention, included)."""
        records = await read_back(topic, partition, missing)
        for record in records:
            await handle(record.value, record.key, record)
            ledger.done(topic, partition, record.offset)
        ledger.done(topic, partition, missing.stop - 1)
        REPAIRED.inc(len(records))
        log.warning(
            "%s[%d] offsets %d-%d were not delivered by the stream: %d record(s) read back from the partition and "
            "counted %s",
            topic,
            partition,
            missing.start,
            missing.stop - 1,
            len(records),
            where,
        )

    def log_jump(topic: str, partition: int, verdict: Admission) -> None:
        log.warning(
            "%s[%d] jumped from offset %s to %d, more than alerts_gap_repair_max=%d: taken as an offset reset, the "
            "records in between are not evaluated",
            topic,
            partition,
            verdict.expected,
            verdict.offset,
            settings.alerts_gap_repair_max,
        )

    async def restored(topic: str, partition: int, offset: int) -> bool:
        """Hold a record that arrived while the state table is being restored until the restore is complete.

        faust hands over records it fetched during the restore (faust-streaming #502). Counted at once, they would
        meet a half-restored table: windows and the ledger mark not back yet, and an event time that makes the
        restored windows look late. Held until the restore completes, they meet the whole table, and the ledger
        skips them when the consumer seeks back and delivers them again. Only the restore is waited for, not the
        revocation before it: that waits for the agent's current record, and waiting for it would deadlock.
        A new rebalance or a stop during the wait interrupts it (False): the record is not counted now, and the
        ledger finds it as a gap later (the next record of its partition, or the gap check).
        """
        recovery = cast(TableManager, app.tables).recovery
        if not recovery.in_recovery:
            return True
        HELD.inc()
        rebalance = app.rebalancing_count
        log.debug(
            "offset %s[%d]@%d arrived during the state restore: held until it completes", topic, partition, offset
        )
        while recovery.in_recovery:
            if app.rebalancing_count != rebalance or app.should_stop:
                log.warning(
                    "offset %s[%d]@%d arrived during the state restore, and a %s came first: not counted now, "
                    "the ledger reads it back as a gap",
                    topic,
                    partition,
                    offset,
                    "stop" if app.should_stop else "new rebalance",
                )
                return False
            await asyncio.sleep(0.05)
        return True

    # A crashed agent stops the whole process (non-zero exit) instead of leaving it up with nothing consuming:
    # a supervisor (systemd, Kubernetes, `riskstream demo`) restarts it and the state table's ledger resumes from the
    # committed offsets. faust's default supervisor would restart the agent in place, on a stream that already
    # acknowledged the record it failed on.
    @app.agent(scored, supervisor_strategy=mode.CrashingSupervisor)
    async def process(stream: Any) -> Any:
        nonlocal delivered
        async for event in stream.events():
            delivered += 1
            message = event.message
            topic, partition, offset = message.topic, message.partition, message.offset
            if not await restored(topic, partition, offset):
                continue
            async with counting:
                verdict = ledger.admit(topic, partition, offset)
                if verdict.kind == "duplicate":
                    REDELIVERED.inc()
                    log.debug(
                        "offset %s[%d]@%d already counted (next is %s): skipped",
                        topic,
                        partition,
                        offset,
                        verdict.expected,
                    )
                    continue
                if verdict.kind == "jump":
                    log_jump(topic, partition, verdict)
                if verdict.missing:
                    await repair(topic, partition, verdict.missing, f"before offset {offset}")
                await handle(event.value, event.key, message)
                ledger.done(topic, partition, offset)

    if settings.alerts_gap_check > 0:
        reported_jumps: set[tuple[str, int, int]] = set()

        @app.timer(interval=settings.alerts_gap_check)
        async def check_gaps() -> None:
            """Records the group committed past without counting them (dropped by the stream, or given up when a
            rebalance or a stop interrupted their hold) are found by the next record of their partition; on a quiet
            partition there may be none. So compare the ledger with the committed offsets too, and read back what
            lies in between."""
            if app.rebalancing:
                return
            partitions = sorted(
                (tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic == settings.topic_scored
            )
            if not partitions:
                return
            try:
                committed = await in_thread(partial(engine.committed_offsets, partitions))
            except KafkaError as exc:
                log.warning(
                    "gap check: committed offsets unavailable, trying again in %ss: %r", settings.alerts_gap_check, exc
                )
                return
            for (topic, partition), offset in sorted(committed.items()):
                async with counting:
                    if app.rebalancing:
                        return
                    verdict = ledger.admit(topic, partition, offset)
                    if verdict.kind == "gap":
                        await repair(topic, partition, verdict.missing, f"(the group had committed offset {offset})")
                    elif verdict.kind == "jump" and (topic, partition, offset) not in reported_jumps:
                        reported_jumps.add((topic, partition, offset))
                        log_jump(topic, partition, verdict)

    if settings.alerts_stall_timeout > 0:
        watch = StallWatch(settings.alerts_stall_timeout)
        seeked: dict[tuple[str, int], int] = {}  # partition -> the mark a stall was answered with a seek at

        @app.timer(interval=max(0.5, min(settings.alerts_stall_timeout / 4, 10.0)))
        async def watch_stream() -> None:
            """A stream that stopped delivering (see alerts/stall.py) is sent back to the waiting records; if that
            does not help, the engine stops for its supervisor to restart it, instead of staying up with records
            waiting and no alert able to fire."""
            recovery = cast(TableManager, app.tables).recovery
            if app.rebalancing or recovery.in_recovery or counting.locked():
                watch.reset()  # nothing is expected to move, or a record is being counted right now
                return
            partitions = sorted(
                (tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic == settings.topic_scored
            )
            if not partitions:
                watch.reset()
                return
            try:
                bounds = await in_thread(partial(engine.partition_bounds, partitions))
                committed = await in_thread(partial(engine.committed_offsets, partitions))
            except KafkaError as exc:
                log.warning("stall watch: offsets unavailable, trying again: %r", exc)
                return
            if app.rebalancing or counting.locked():
                return
            marks = {
                tp: next_to_count(ledger.expected(*tp), committed.get(tp), bounds[tp][0], settings.alerts_offset_reset)
                for tp in partitions
            }
            ends = {tp: end for tp, (_, end) in bounds.items()}
            stalls = watch.observe(time.monotonic(), ends, marks, delivered)
            if not stalls:
                return
            reason = "; ".join(stall.describe() for stall in stalls)
            state = consumer_state(app)
            again = [st for st in stalls if seeked.get((st.topic, st.partition)) == st.mark]
            if not again:
                # First time at these marks: the consumer has typically fetched the records already (its position
                # is at the end) and lost them on the way to the agent. Seeking back to the marks makes it fetch
                # them again; the ledger skips anything already counted.
                STALLS.labels("seek").inc()
                log.error(
                    "the stream stopped delivering records: %s. faust's consumer: %s. Seeking back to the next "
                    "offset to count.",
                    reason,
                    state,
                )
                for stall in stalls:
                    seeked[(stall.topic, stall.partition)] = stall.mark
                    await app.consumer.seek(TP(stall.topic, stall.partition), stall.mark)
                watch.reset()
                return
            STALLS.labels("exit").inc()
            log.error(
                "the stream stopped delivering records again after a seek: %s. faust's consumer: %s. Exiting for a "
                "restart (the offset ledger resumes where counting stopped).",
                reason,
                state,
            )
            await app.crash(StreamStalledError(reason))

    @app.timer(interval=max(0.5, min(settings.alerts_idle_close, 5.0)))
    async def close_idle() -> None:
        if app.rebalancing:  # the state table may be half restored
            return
        if time.monotonic() - engine.last_event >= settings.alerts_idle_close:
            await emit(evaluator().advance(datetime.now(tz=UTC)))
        OPEN_WINDOWS.set(evaluator().open_windows())

    @app.timer(interval=settings.alerts_rules_refresh)
    async def refresh_rules() -> None:
        try:
            rules = await in_thread(engine.current_rules)
        except SQLAlchemyError as exc:  # keep evaluating the rules we have
            log.warning("rule refresh failed, keeping %d rule(s): %r", len(evaluator().rules), exc)
            return
        evaluator().set_rules(rules)

    @app.timer(interval=settings.webhook_poll)
    async def deliveries() -> None:
        try:
            report = await in_thread(engine.deliver)
        except SQLAlchemyError as exc:  # the store is down: pending rows stay pending, next tick retries
            log.warning("delivery loop: store unavailable: %r", exc)
            return
        DELIVERIES.labels("delivered").inc(report.delivered)
        DELIVERIES.labels("retry").inc(report.retried)
        DELIVERIES.labels("failed").inc(report.failed)
        if report.delivered or report.retried or report.failed:
            log.info("webhooks: %d delivered, %d to retry, %d failed", report.delivered, report.retried, report.failed)

    return app


def install_templates(engine: AlertEngine) -> None:
    """Install the index templates before faust starts, waiting for Elasticsearch if it is not up yet.

    An alert indexed before its template exists would auto-create its monthly index without the alias and with
    dynamic mappings: invisible to the dashboard and to search, and never repaired by a later start. So the
    engine evaluates nothing until the templates are in place. A layout error (an index that exists without
    its alias) is not retried: it needs an operator.
    """
    s = engine.settings

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning("Elasticsearch index templates not installed yet (attempt %d): %r", state.attempt_number, exc)

    for attempt in Retrying(
        wait=wait_exponential(multiplier=0.5, max=30),
        retry=retry_if_not_exception_type(IndexLayoutError),
        before_sleep=log_retry,
        reraise=True,
    ):
        with attempt:
            ensure_templates(engine.es, s.es_docs_alias, s.es_alerts_alias)


def run(settings: AlertSettings) -> None:
    """Run the engine until SIGINT/SIGTERM (faust drains and commits on shutdown).

    Exits 1 when its agent crashed and :data:`EXIT_STALLED` (75) when its stream stopped delivering: either way a
    supervisor restarts it, and the offset ledger resumes where counting stopped."""
    db = Database(settings.db_url)
    engine = AlertEngine(settings, db)
    rules = engine.current_rules()
    log.info("alert engine starting with %d rule(s): %s", len(rules), json.dumps([r.id for r in rules]))
    # The topics exist before faust starts: the state table is sized from the scored topic, and the first alert
    # or dead letter must not wait for a broker to create its topic (see docs/alerts.md, "Topics").
    topics = ensure_configured(settings, [settings.topic_scored, settings.topic_alerts, settings.topic_dlq])
    partitions = topics[0].partitions
    if settings.alerts_metrics_port:  # up while the engine still waits for Elasticsearch below
        start_http_server(settings.alerts_metrics_port, addr="127.0.0.1")
        log.info("metrics on http://127.0.0.1:%d/metrics", settings.alerts_metrics_port)
    install_templates(engine)
    app = build_app(settings, engine, partitions)
    worker = BoundedStopWorker(app, stop_timeout=settings.alerts_stop_timeout, loglevel=settings.log_level.lower())
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if stalled(worker, app):
            raise SystemExit(EXIT_STALLED) from exc
        raise
    finally:
        engine.close()


def stalled(*services: mode.ServiceT) -> bool:
    return any(isinstance(s.crash_reason, StreamStalledError) for s in services)


class BoundedStopWorker(faust.Worker):
    """A faust worker whose shutdown cannot outlast ``stop_timeout`` seconds.

    faust stops its consumer by waiting for every record in flight to be acknowledged, committing as it goes. Once
    in a while that wait hangs after an agent crashed (the crashed record is never acknowledged, and a commit
    racing the consumer's leaving the group never returns): the process would then stay up for good with nothing
    consuming, and no supervisor would restart it. When the time is up, the process exits as a finished stop
    would have: 75 after a stall, 1 otherwise (a crash, or a stop that could not drain). Offsets of records not
    yet counted were never committed, so the next engine is redelivered them.
    """

    def __init__(self, app: faust.App, *, stop_timeout: float, loglevel: str) -> None:
        super().__init__(app, loglevel=loglevel, quiet=True)
        self.stop_timeout = stop_timeout
        self._stop_deadline: threading.Timer | None = None

    async def on_stop(self) -> None:
        if self._stop_deadline is None:
            self._stop_deadline = threading.Timer(self.stop_timeout, self._exit_now)
            self._stop_deadline.daemon = True
            self._stop_deadline.start()
        await super().on_stop()

    def _exit_now(self) -> None:
        code = EXIT_STALLED if stalled(self, self.app) else 1
        log.error(
            "the engine did not stop within %.0fs (faust's shutdown hangs); exiting with code %d. Records not "
            "counted yet were not committed: the next engine is redelivered them.",
            self.stop_timeout,
            code,
        )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(code)

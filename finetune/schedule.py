"""The periodic fine-tune job: retrain every interval and/or when enough new analyst labels arrived.

The loop polls the SQL store (label count, the last run) every ``schedule_poll_seconds``. A stop request
(SIGTERM/SIGINT sets the event) aborts a training in progress before anything is registered and ends the loop.
Two trainings never overlap: ``run_pipeline`` takes an exclusive lock, a second scheduler simply skips its turn.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from finetune.data import count_labels
from finetune.pipeline import AlreadyRunningError, run_pipeline
from finetune.settings import FinetuneSettings
from finetune.train import TrainingAbortedError
from riskstream.db import Database
from schemas.db import FinetuneRunRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Due:
    due: bool
    reason: str


def is_due(
    *,
    now: datetime,
    last_started: datetime | None,
    labels_now: int,
    labels_at_last: int,
    interval_minutes: float,
    min_new_labels: int,
) -> Due:
    """Pure decision: is a run due? (No previous run: yes, the deployment needs a first model.)"""
    if last_started is None:
        return Due(True, "no previous run")
    if interval_minutes > 0 and now - last_started >= timedelta(minutes=interval_minutes):
        return Due(True, f"interval of {interval_minutes:g} min elapsed since {last_started.isoformat()}")
    new = labels_now - labels_at_last
    if min_new_labels > 0 and new >= min_new_labels:
        return Due(True, f"{new} new labels (threshold {min_new_labels})")
    return Due(False, f"{new} new labels, last run {last_started.isoformat()}")


def check_due(settings: FinetuneSettings, db: Database, now: datetime | None = None) -> Due:
    with db.session() as session:
        last = session.scalars(select(FinetuneRunRow).order_by(FinetuneRunRow.started_at.desc()).limit(1)).first()
        labels_now = count_labels(session)
    return is_due(
        now=now or datetime.now(tz=UTC),
        last_started=last.started_at if last is not None else None,
        labels_now=labels_now,
        labels_at_last=last.labels_seen if last is not None else 0,
        interval_minutes=settings.schedule_interval_minutes,
        min_new_labels=settings.min_new_labels,
    )


Runner = Callable[..., dict[str, Any]]


def run_schedule(
    settings: FinetuneSettings,
    db: Database,
    stop: threading.Event,
    *,
    runner: Runner = run_pipeline,
    max_runs: int | None = None,
    progress: bool = False,
) -> int:
    """Loop until ``stop`` is set (or ``max_runs`` runs were attempted); returns the number of runs attempted."""
    attempted = 0
    log.info(
        "fine-tune schedule: every %g min and/or after %d new labels; polling every %g s",
        settings.schedule_interval_minutes,
        settings.min_new_labels,
        settings.schedule_poll_seconds,
    )
    while not stop.is_set():
        due = check_due(settings, db)
        if due.due:
            attempted += 1
            log.info("fine-tune run due: %s", due.reason)
            try:
                summary = runner(settings, db, should_stop=stop.is_set, progress=progress, trigger=due.reason)
                log.info("fine-tune run finished: %s is %s", summary.get("version"), summary.get("status"))
            except AlreadyRunningError as exc:
                log.warning("skipped: %s", exc)
            except TrainingAbortedError as exc:
                log.warning("fine-tune run aborted (registry untouched): %s", exc)
            except Exception:
                log.exception("fine-tune run failed (registry untouched); retrying at the next due time")
            if max_runs is not None and attempted >= max_runs:
                break
        else:
            log.debug("not due: %s", due.reason)
        stop.wait(settings.schedule_poll_seconds)
    log.info("fine-tune schedule stopped")
    return attempted

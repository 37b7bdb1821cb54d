"""The periodic job: when a run is due, one run at a time, a clean stop that leaves the registry untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from finetune.pipeline import AlreadyRunningError, run_lock, run_pipeline
from finetune.schedule import check_due, is_due, run_schedule
from finetune.testing import tiny_settings
from finetune.train import TrainingAbortedError
from riskstream.db import Database
from riskstream.registry import list_versions
from schemas.db import FinetuneRunRow, LabelRow

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_due_on_interval_or_new_labels() -> None:
    base: dict[str, Any] = {
        "now": NOW,
        "labels_now": 10,
        "labels_at_last": 10,
        "interval_minutes": 60,
        "min_new_labels": 5,
    }
    assert is_due(**{**base, "last_started": None}).due
    assert not is_due(**{**base, "last_started": NOW - timedelta(minutes=59)}).due
    assert is_due(**{**base, "last_started": NOW - timedelta(minutes=60)}).due
    fresh = {**base, "last_started": NOW - timedelta(minutes=1)}
    assert not is_due(**{**fresh, "labels_now": 14}).due
    assert is_due(**{**fresh, "labels_now": 15}).reason == "5 new labels (threshold 5)"
    # 0 switches a trigger off
    assert not is_due(**{**fresh, "labels_now": 99, "min_new_labels": 0}).due
    assert not is_due(**{**base, "last_started": NOW - timedelta(days=9), "interval_minutes": 0}).due


def test_check_due_counts_labels_since_the_last_run(seed_slice: Path, tmp_path: Path, db: Database) -> None:
    settings = tiny_settings(seed_slice, tmp_path, schedule_interval_minutes=0, min_new_labels=2)
    assert check_due(settings, db).reason == "no previous run"
    with db.session() as session, session.begin():
        session.add(FinetuneRunRow(started_at=datetime.now(tz=UTC), status="succeeded", labels_seen=0))
        session.add(LabelRow(doc_id="a", task="cs_sentiment", label="negative", text="bad", labeled_by="ann"))
    assert not check_due(settings, db).due
    with db.session() as session, session.begin():
        session.add(LabelRow(doc_id="b", task="cs_sentiment", label="positive", text="great", labeled_by="ann"))
    assert check_due(settings, db).due


def test_schedule_skips_while_another_run_holds_the_lock_and_stops_on_request(
    seed_slice: Path, tmp_path: Path, db: Database
) -> None:
    settings = tiny_settings(seed_slice, tmp_path, schedule_poll_seconds=0.05)
    stop = threading.Event()
    with run_lock(tmp_path):  # another process's training
        runs = run_schedule(settings, db, stop, max_runs=1)  # the real pipeline: refuses at once
    assert runs == 1
    with db.session() as session:
        assert list_versions(session) == []
        assert session.scalars(select(FinetuneRunRow)).all() == []  # the refused run left no trace

    calls: list[str] = []

    def runner(_settings: Any, _db: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs["trigger"])
        stop.set()  # as SIGTERM would
        raise TrainingAbortedError("stopped at step 3/10")

    started = time.monotonic()
    assert run_schedule(settings, db, stop, runner=runner) == 1
    assert calls == ["no previous run"] and time.monotonic() - started < 5


@pytest.mark.slow
def test_an_aborted_training_leaves_registry_untouched(seed_slice: Path, tmp_path: Path, db: Database) -> None:
    with pytest.raises(TrainingAbortedError):
        run_pipeline(tiny_settings(seed_slice, tmp_path), db, should_stop=lambda: True, progress=False)
    with db.session() as session:
        assert list_versions(session) == []
        (row,) = session.scalars(select(FinetuneRunRow)).all()
        assert row.status == "failed" and "TrainingAbortedError" in row.detail["error"]
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    with run_lock(tmp_path):  # released
        pass
    with run_lock(tmp_path), pytest.raises(AlreadyRunningError):
        run_pipeline(tiny_settings(seed_slice, tmp_path), db, progress=False)


@pytest.mark.slow
def test_sigterm_stops_the_schedule_process_cleanly(seed_slice: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RISKSTREAM_SEED_DATA": str(seed_slice),
        "RISKSTREAM_DATA_DIR": str(tmp_path),
        "RISKSTREAM_MAX_TRAIN_MINUTES": "0",
        "RISKSTREAM_EPOCHS": "50",  # far longer than the test waits
        "RISKSTREAM_BATCH_SIZE": "4",
        "RISKSTREAM_MAX_LENGTH": "32",
        "RISKSTREAM_SCHEDULE_POLL_SECONDS": "0.2",
    }
    env.pop("RISKSTREAM_DATABASE_URL", None)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "riskstream"), "finetune", "schedule"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = Database(f"sqlite:///{tmp_path / 'riskstream.db'}")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            with db.session() as session:
                if session.scalars(select(FinetuneRunRow).where(FinetuneRunRow.status == "running")).first():
                    break
            time.sleep(0.5)
        time.sleep(3)  # into the training loop
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "fine-tune schedule stopped" in err
    with db.session() as session:
        assert list_versions(session) == []
        (row,) = session.scalars(select(FinetuneRunRow)).all()
        assert row.status == "failed"
    db.dispose()

"""The demo's supervision of its long-running children (worker, alert engine), with real child processes:
an exit is answered by a restart until the restarts are used up, and every start is marked in the appended log."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import pytest

from riskstream.demo import Child

CRASHING = [sys.executable, "-c", "import sys; print('boom', flush=True); sys.exit(3)"]
SERVING = [
    sys.executable,
    "-c",
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (print('drained', flush=True), sys.exit(0)))\n"
    "print('up', flush=True)\n"
    "while True: time.sleep(0.05)",
]


def _wait_exit(child: Child) -> None:
    assert child.proc is not None
    child.proc.wait(timeout=30)


def test_a_crashing_child_is_restarted_until_its_restarts_are_used_up(tmp_path: Path) -> None:
    log = tmp_path / "alerts.log"
    log.write_bytes(b"old run: Traceback (a crash of an earlier demo)\n")
    child = Child("alert engine", CRASHING, dict(os.environ), log, max_restarts=2)
    child.start()
    for expected in (1, 2):
        _wait_exit(child)
        child.check()
        assert child.restarts == expected
    _wait_exit(child)
    with pytest.raises(click.ClickException) as err:
        child.check()
    assert err.value.message == f"the alert engine exited 3 times, last with code 3; see {log}"
    child.stop()

    text = log.read_text(encoding="utf-8")
    assert text.startswith("old run: Traceback")  # earlier runs are kept ...
    headers = [line for line in text.splitlines() if line.startswith("=====")]
    # ... and each start of this run is marked, so the current output is what follows the last header
    assert [h.split("demo: ")[1] for h in headers] == [f"alert engine start {n} =====" for n in (1, 2, 3)]
    assert text.count("boom") == 3


def test_a_child_without_restarts_fails_on_its_first_exit(tmp_path: Path) -> None:
    child = Child("worker", CRASHING, dict(os.environ), tmp_path / "worker.log")
    child.start()
    _wait_exit(child)
    with pytest.raises(click.ClickException, match=r"^the worker exited with code 3; see .*worker\.log$"):
        child.check()
    child.stop()


def test_a_running_child_is_left_alone_and_stopped_with_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    child = Child("worker", SERVING, dict(os.environ), log)
    child.start()
    deadline = time.monotonic() + 30
    while b"up" not in log.read_bytes():  # the handler is installed before "up" is printed
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    child.check()
    assert child.restarts == 0 and child.proc is not None and child.proc.poll() is None
    child.stop()
    assert child.proc.returncode == 0
    assert log.read_text(encoding="utf-8").rstrip().endswith("drained")

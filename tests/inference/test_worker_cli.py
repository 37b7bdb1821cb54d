"""The worker command's process-level setup (no services: the worker itself is replaced by a recorder)."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

import inference.worker
from inference.cli import worker


class _Recorder:
    """Stands in for the Worker: records the interpreter's switch interval when the worker would start."""

    seen: ClassVar[list[float]] = []

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def install_signals(self) -> None:
        pass

    def run(self) -> None:
        _Recorder.seen.append(sys.getswitchinterval())


@pytest.mark.parametrize(("flag", "expected"), [([], 0.005), (["--gil-switch-interval-ms", "0.2"], 0.0002)])
def test_the_worker_applies_its_gil_switch_interval(
    monkeypatch: pytest.MonkeyPatch, flag: list[str], expected: float
) -> None:
    # a model thread that releases the GIL around every tensor operation waits up to the interval to get it back
    # whenever another thread runs Python (beside a busy thread: 61 docs/s at Python's 5 ms, 347-415 at 0.2 ms)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.01)  # neither value: the command must set it, not find it
    monkeypatch.setattr(inference.worker, "Worker", _Recorder)
    _Recorder.seen.clear()
    try:
        result = CliRunner().invoke(worker, flag, catch_exceptions=False)
    finally:
        sys.setswitchinterval(before)
    assert result.exit_code == 0, result.output
    assert _Recorder.seen == [pytest.approx(expected)]


def test_a_switch_interval_of_zero_is_refused() -> None:
    result = CliRunner().invoke(worker, ["--gil-switch-interval-ms", "0"])
    assert result.exit_code != 0
    assert "gil" in result.output.lower()


class _EnvRecorder(_Recorder):
    """Records oneDNN's cache capacity variable as the worker would start with it."""

    env: ClassVar[list[str | None]] = []

    def run(self) -> None:
        import os

        _EnvRecorder.env.append(os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"))


@pytest.mark.parametrize(("flag", "expected"), [([], "64"), (["--onednn-cache-capacity", "256"], "256")])
def test_the_worker_caps_onednns_kernel_cache(monkeypatch: pytest.MonkeyPatch, flag: list[str], expected: str) -> None:
    # with oneDNN's default (1,024 kernels, one per matrix shape) a bf16 worker's memory grew past 1.5 GB in bench e2e
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")  # the command must set it, not find it
    monkeypatch.setattr(inference.worker, "Worker", _EnvRecorder)
    _EnvRecorder.env.clear()
    result = CliRunner().invoke(worker, flag, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _EnvRecorder.env == [expected]


def test_a_cache_capacity_below_one_is_refused() -> None:
    result = CliRunner().invoke(worker, ["--onednn-cache-capacity", "0"])
    assert result.exit_code == 2 and "onednn_cache_capacity" in result.output

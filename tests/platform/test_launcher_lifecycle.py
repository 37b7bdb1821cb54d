"""The launcher against real engines: idempotent up, status, down, the cache, and rollback of a failed up.

These start their own small stacks (Kafka only where that suffices) in temporary data dirs, beside the
session's stack, exactly as a user runs several stacks side by side.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.artifacts import MARKER, kafka_libs
from launcher.base import ServiceError, free_port, port_is_free, process_start_ticks
from launcher.cli import services
from launcher.settings import LauncherSettings
from launcher.stack import Stack

pytestmark = pytest.mark.services


@pytest.fixture
def kafka_only(tmp_path: Path) -> Iterator[Stack]:
    base = LauncherSettings()
    # fill the artifact cache the ordinary way first (a no-op when an earlier `up` already did)
    kafka_libs(base.artifact_cache, base.kafka_version, base.maven)
    kafka_port = free_port()
    settings = LauncherSettings(
        data_dir=tmp_path / "data",
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        es_url=f"http://127.0.0.1:{free_port(avoid={kafka_port})}",
        database_url=None,
        services="kafka",
        kafka_heap="256m",
        maven=str(tmp_path / "maven-must-not-run"),  # any call to Maven would fail the start
        start_timeout=240.0,
    )
    stack = Stack(settings)
    yield stack
    stack.down(purge=True)


def _cli(stack: Stack, *args: str) -> tuple[int, str]:
    s = stack.settings
    result = CliRunner().invoke(
        services,
        [
            *args,
            "--data-dir",
            str(s.data_dir),
            "--kafka-bootstrap",
            s.kafka_bootstrap,
            "--es-url",
            s.es_url,
            "--services",
            "kafka",
            "--maven",
            s.maven,
        ],
        catch_exceptions=False,
    )
    return result.exit_code, result.output


def test_up_is_idempotent_status_reports_and_down_leaves_nothing(kafka_only: Stack) -> None:
    stack = kafka_only
    assert (stack.settings.artifact_cache / f"kafka-{stack.settings.kafka_version}" / MARKER).exists()

    [first] = stack.up()  # from the cache: Maven is not even installed as far as these settings know
    assert (first.name, first.healthy, first.action, first.version) == ("kafka", True, "started", "3.9.1")
    assert first.pid is not None and first.managed

    [again] = stack.up()
    assert (again.action, again.pid) == ("already running", first.pid)

    code, out = _cli(stack, "status", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["healthy"] is True
    assert report["data_dir"] == str(stack.settings.data_dir)
    kafka = report["services"]["kafka"]
    assert {"name", "address", "healthy", "version", "managed", "pid", "log", "detail", "ports"} <= set(kafka)
    assert (kafka["address"], kafka["healthy"], kafka["managed"], kafka["pid"]) == (
        stack.settings.kafka_bootstrap,
        True,
        True,
        first.pid,
    )
    assert Path(kafka["log"]).is_file()

    [down] = stack.down()
    assert down.action == "stopped"
    assert process_start_ticks(first.pid) is None
    port = int(stack.settings.kafka_bootstrap.rsplit(":", 1)[1])
    assert port_is_free(port)

    code, out = _cli(stack, "status", "--json")
    assert code == 3
    assert json.loads(out)["services"]["kafka"]["healthy"] is False

    # a second `up` after `down` reuses the cache and the broker's data: still no Maven
    [restarted] = stack.up()
    assert restarted.healthy and restarted.action == "started" and restarted.pid != first.pid


def test_a_failed_up_stops_what_it_started(kafka_only: Stack, request: pytest.FixtureRequest) -> None:
    settings = kafka_only.settings.model_copy(
        update={"services": "kafka,elasticsearch", "es_heap": "not-a-size", "start_timeout": 120.0}
    )
    stack = Stack(settings)
    request.addfinalizer(lambda: stack.down(["kafka", "elasticsearch"], purge=True))
    with pytest.raises(ServiceError) as failure:
        stack.up(["kafka", "elasticsearch"])
    message = str(failure.value)
    assert message.startswith("elasticsearch:")
    assert "last log lines" in message  # the node's own words about why it did not start
    assert stack.load_state()["services"] == {}  # Kafka, started by this call, was stopped again
    assert port_is_free(int(settings.kafka_bootstrap.rsplit(":", 1)[1]))

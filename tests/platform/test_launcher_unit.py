"""The launcher's own logic and its fast failure modes (no engine is started here)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from launcher.base import (
    ProcessRecord,
    ServiceError,
    free_port,
    process_start_ticks,
    split_host_port,
    stop_process_group,
)
from launcher.kafka import KafkaService, kafka_cluster_id
from launcher.settings import LauncherSettings
from launcher.stack import Stack


def make_settings(tmp_path: Path, **overrides: object) -> LauncherSettings:
    kafka_port = free_port()
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "kafka_bootstrap": f"127.0.0.1:{kafka_port}",
        "es_url": f"http://127.0.0.1:{free_port(avoid={kafka_port})}",
        "database_url": None,
        "start_timeout": 60.0,
    }
    values.update(overrides)
    return LauncherSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:19092", ("127.0.0.1", 19092)),
        ("127.0.0.1:19092,127.0.0.1:19093", ("127.0.0.1", 19092)),
        ("http://127.0.0.1:19200", ("127.0.0.1", 19200)),
        ("http://localhost", ("localhost", 9200)),
        ("postgresql+psycopg://u:p@127.0.0.1:15432/db", ("127.0.0.1", 15432)),
        ("[::1]:9093", ("::1", 9093)),
    ],
)
def test_addresses_are_parsed_from_the_settings(address: str, expected: tuple[str, int]) -> None:
    assert split_host_port(address, 9200) == expected


def test_default_services_and_postgres_by_database_url(tmp_path: Path) -> None:
    assert make_settings(tmp_path).wanted_services() == ["kafka", "elasticsearch"]
    pg = make_settings(tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:15432/rs")
    assert pg.wanted_services() == ["kafka", "elasticsearch", "postgres"]
    assert make_settings(tmp_path, services="kafka", with_postgres=True).wanted_services() == ["kafka", "postgres"]
    with pytest.raises(ValidationError, match="redis"):
        make_settings(tmp_path, services="kafka,redis")


def test_kafka_cluster_ids_are_valid_and_never_look_like_flags() -> None:
    ids = {kafka_cluster_id() for _ in range(500)}
    assert len(ids) == 500
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_kafka_listens_only_where_the_setting_says(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    svc = KafkaService(settings, tmp_path / "kafka", {})
    props = svc.properties()
    assert props["advertised.listeners"] == f"PLAINTEXT://{settings.kafka_bootstrap}"
    assert props["listeners"].startswith(f"PLAINTEXT://{settings.kafka_bootstrap},CONTROLLER://127.0.0.1:")
    assert svc.controller_port != svc.port
    assert props["num.partitions"] == "3"


def test_a_non_loopback_address_is_refused(tmp_path: Path) -> None:
    stack = Stack(make_settings(tmp_path, kafka_bootstrap="10.1.2.3:9092"))
    with pytest.raises(ServiceError, match="RISKSTREAM_KAFKA_BOOTSTRAP"):
        stack.up(["kafka"])


@pytest.fixture
def squatter() -> Iterator[int]:
    """A process-less listener on a port: accepts connections, never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield int(sock.getsockname()[1])
    sock.close()


@pytest.mark.parametrize("service", ["kafka", "elasticsearch"])
def test_a_taken_port_fails_fast_naming_the_port(tmp_path: Path, squatter: int, service: str) -> None:
    settings = (
        make_settings(tmp_path, kafka_bootstrap=f"127.0.0.1:{squatter}")
        if service == "kafka"
        else make_settings(tmp_path, es_url=f"http://127.0.0.1:{squatter}")
    )
    stack = Stack(settings)
    with pytest.raises(ServiceError) as failure:
        stack.up([service])
    message = str(failure.value)
    assert f"port {squatter}" in message
    assert "fix:" in message
    assert stack.load_state()["services"] == {}  # nothing recorded, nothing started


def test_missing_java_is_named_with_the_fix(tmp_path: Path) -> None:
    stack = Stack(make_settings(tmp_path, java_home=tmp_path / "no-jdk"))
    with pytest.raises(ServiceError, match="Java is missing") as failure:
        stack.up(["kafka"])
    assert "RISKSTREAM_JAVA_HOME" in str(failure.value)
    assert stack.load_state()["services"] == {}


def test_missing_maven_with_an_empty_cache_is_named(tmp_path: Path) -> None:
    stack = Stack(make_settings(tmp_path, cache_dir=tmp_path / "empty-cache", maven=str(tmp_path / "no-mvn")))
    with pytest.raises(ServiceError, match="Maven") as failure:
        stack.up(["kafka"])
    assert "install Maven" in str(failure.value)


def test_a_refused_download_is_named_with_mavens_output(tmp_path: Path) -> None:
    fake = tmp_path / "mvn"
    fake.write_text(
        "#!/bin/sh\necho '[ERROR] Could not transfer artifact org.apache.kafka:kafka_2.13: Connection refused'\n"
        "exit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    stack = Stack(make_settings(tmp_path, cache_dir=tmp_path / "empty-cache", maven=str(fake)))
    with pytest.raises(ServiceError) as failure:
        stack.up(["kafka"])
    message = str(failure.value)
    assert "Maven Central failed" in message
    assert "Connection refused" in message  # the last lines of Maven's output
    assert "repo.maven.apache.org" in message  # the fix
    assert not (tmp_path / "empty-cache" / "kafka-3.9.1" / ".riskstream-complete").exists()


def test_stop_never_signals_a_recycled_pid() -> None:
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ticks = process_start_ticks(child.pid)
        assert ticks is not None
        stranger = ProcessRecord(pid=child.pid, start_ticks=ticks + 12345, log="")
        assert stop_process_group(stranger, signal.SIGTERM, timeout=2) is False
        assert child.poll() is None  # still running: its start time did not match

        ours = ProcessRecord(pid=child.pid, start_ticks=ticks, log="")
        assert stop_process_group(ours, signal.SIGTERM, timeout=5) is True
        # gone (stop_process_group also reaps its own children, so ask /proc rather than Popen)
        assert process_start_ticks(child.pid) is None
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()

"""A client started while the brokers are unreachable connects soon after they come back.

kafka-python backs off exponentially between connection attempts, up to 30 s by default (the Java client stops at
1 s): a worker or command started during a broker restart would sit out most of that after the broker was back.
Here the broker's port is reached through a local TCP relay that refuses connections at first and forwards to the
real broker after 15 s; the client (riskstream's options) must be connected within three seconds of that (with
kafka-python's default backoff it gave up at its 30 s bootstrap timeout instead).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from kafka.admin import KafkaAdminClient

from riskstream.kafka_client import client_options
from riskstream.settings import CommonSettings

pytestmark = pytest.mark.services

CLOSED_FOR_S = 15.0  # long enough for kafka-python's own backoff to grow to several seconds (it starts at 0.05 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


class Relay:
    """Listens on ``port`` once :meth:`open` is called and forwards every connection to ``target``."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.server: socket.socket | None = None
        self.opened_at = 0.0

    def open(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self.server, self.opened_at = server, time.monotonic()
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
def relay(settings: CommonSettings) -> Iterator[Relay]:
    host, port = settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)
    r = Relay(_free_port(), (host, int(port)))
    yield r
    r.close()


def test_a_client_started_before_the_broker_is_reachable_connects_soon_after(
    settings: CommonSettings, relay: Relay
) -> None:
    options = client_options(settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{relay.port}"}))
    connected: dict[str, float] = {}

    def connect() -> None:
        admin = KafkaAdminClient(**options, client_id="riskstream-reconnect-test")
        try:
            admin.list_topics()
            connected["at"] = time.monotonic()
        finally:
            admin.close()

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    time.sleep(CLOSED_FOR_S)  # every attempt so far was refused
    assert "at" not in connected
    relay.open()
    thread.join(timeout=40)
    assert "at" in connected, "the client never connected"
    assert connected["at"] - relay.opened_at < 3.0  # with a 1 s ceiling: well under (measured 0.0-0.2 s)

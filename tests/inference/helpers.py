"""Helpers of the worker tests: topics, producing, reading ES and the DLQ, the registry, a TCP proxy."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from riskstream.settings import CommonSettings

# short documents of both channels and very different lengths, so a pack pads some rows: the engine tests' input
MIXED_DOCS: tuple[tuple[str, str], ...] = (
    ("Shares of Acme plunged 20% after the company cut its full-year guidance.", "news"),
    ("I was charged twice for the same card payment, please refund me", "customer_service"),
    ("Fed holds rates steady", "news"),
    ("ok", "customer_service"),
    (
        "Quarterly revenue beat expectations on strong cloud demand, and the board raised the dividend by 10 percent.",
        "news",
    ),
)


def load_in_fresh_process(bundle: Path, load_kwargs: str, then_print: str) -> str:
    """Load ``bundle`` with ``load_bundle(path, <load_kwargs>)`` in a new Python process, fail if that imported
    transformers, and return what ``then_print`` (an expression over the loaded bundle ``b``) printed."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from riskstream.modeling import load_bundle; "
        f"b = load_bundle(Path({str(bundle)!r}), {load_kwargs}); "
        "assert 'transformers' not in sys.modules, 'transformers was imported'; "
        f"print({then_print})"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.strip()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def create_topics(settings: CommonSettings, partitions: int = 3) -> None:
    from schemas.topics import ensure_topics

    topics = [settings.topic_raw, settings.topic_scored, settings.topic_dlq]
    ensure_topics(settings.kafka_bootstrap, topics, partitions=partitions, replication=1)


def produce(settings: CommonSettings, messages: Iterable[tuple[str | None, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap.split(","), acks="all")
    for key, value in messages:
        producer.send(settings.topic_raw, key=key.encode() if key else None, value=value)
    producer.flush(30)
    producer.close()


def good_docs(prefix: str, n: int) -> list[tuple[str | None, bytes]]:
    out: list[tuple[str | None, bytes]] = []
    for i in range(n):
        channel = "news" if i % 2 == 0 else "customer_service"
        doc = {"id": f"{prefix}-{i}", "channel": channel, "source": "test", "text": f"Document {i}: shares fell {i}%"}
        out.append((doc["id"], json.dumps(doc).encode()))
    return out


def es_docs(settings: CommonSettings, **query: Any) -> list[dict[str, Any]]:
    from riskstream.es import make_client

    client = make_client(settings)
    if not client.indices.exists_alias(name=settings.es_docs_alias):
        return []
    client.indices.refresh(index=settings.es_docs_alias)
    resp = client.search(index=settings.es_docs_alias, size=10_000, query=query or {"match_all": {}})
    return [dict(h["_source"], _index=h["_index"], _id=h["_id"]) for h in resp["hits"]["hits"]]


def es_count(settings: CommonSettings) -> int:
    return len(es_docs(settings))


def wait_for_records(settings: CommonSettings, topic: str, n: int, timeout_s: float) -> list[dict[str, Any]]:
    """The records of ``topic`` once it holds at least ``n`` (read again until then, for at most ``timeout_s``)."""
    records: list[dict[str, Any]] = []

    def enough() -> bool:
        records[:] = read_topic(settings, topic, 2)
        return len(records) >= n

    wait_until(enough, timeout_s, f"{n} records on {topic}")
    return records


def read_records(settings: CommonSettings, topic: str, timeout_s: float = 5.0) -> list[Any]:
    """Every record of ``topic`` from the start, as kafka-python ConsumerRecords (offset, key, value)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    out = list(consumer)
    consumer.close()
    return out


def read_topic(settings: CommonSettings, topic: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the start, its JSON value parsed."""
    return [json.loads(r.value) for r in read_records(settings, topic, timeout_s)]


def committed_ids(settings: CommonSettings, group_id: str, timeout_s: float = 30.0) -> set[str]:
    """The ids of the raw topic's records that ``group_id`` has committed (those below its committed offsets).

    Reads the committed offsets without joining the group, then the records below them from the start."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap.split(","), group_id=group_id, enable_auto_commit=False
    )
    try:
        partitions = consumer.partitions_for_topic(settings.topic_raw) or set()
        tps = [TopicPartition(settings.topic_raw, p) for p in sorted(partitions)]
        limits = {tp: consumer.committed(tp) or 0 for tp in tps}
        wanted = [tp for tp in tps if limits[tp] > 0]
        ids: set[str] = set()
        if not wanted:
            return ids
        consumer.assign(wanted)
        consumer.seek_to_beginning(*wanted)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < limits[tp] for tp in wanted):
            assert time.monotonic() < deadline, "timed out reading the committed records"
            for tp, records in consumer.poll(timeout_ms=500).items():
                ids.update(json.loads(r.value)["id"] for r in records if r.offset < limits[tp])
        return ids
    finally:
        consumer.close(autocommit=False)


def register(
    settings: CommonSettings,
    version: str,
    path: Path,
    digest: str,
    *,
    promoted_at: datetime | None = None,
    retire_others: bool = True,
) -> None:
    """Make ``version`` the champion (the write side belongs to finetune; tests insert the row directly)."""
    from sqlalchemy import update

    from riskstream.db import Database
    from schemas.db import ModelVersionRow

    db = Database(settings.db_url)
    with db.session() as session:
        if retire_others:
            champions = update(ModelVersionRow).where(ModelVersionRow.status == "champion")
            session.execute(champions.values(status="retired"))
        session.add(
            ModelVersionRow(
                version=version,
                base_model="all-MiniLM-L6-v2",
                status="champion",
                artifact_path=str(path),
                artifact_sha256=digest,
                data_fingerprint="0" * 64,
                config={},
                metrics={},
                promoted_at=promoted_at or datetime.now(tz=UTC),
            )
        )
        session.commit()


class TcpProxy:
    """A loopback TCP forwarder in front of a real service; ``block()`` cuts it off, ``unblock()`` restores it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.blocked = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.blocked.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def block(self) -> None:
        self.blocked.set()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
                except OSError:
                    pass
            self._conns.clear()

    def unblock(self) -> None:
        self.blocked.clear()

    def close(self) -> None:
        self._closed = True
        self.block()
        self.server.close()

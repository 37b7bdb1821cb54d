"""Reading back what ingest published, from the real broker."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer


def consume(bootstrap: str, topic: str, expected: int, *, timeout_s: float = 30.0, settle_s: float = 2.0) -> list[Any]:
    """Every record of ``topic`` from the start: waits for ``expected`` records, then ``settle_s`` more so an
    unexpected extra record (a duplicate publish) would be seen too."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=500,
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
            if len(records) >= expected:
                if settle_until is None:
                    settle_until = time.monotonic() + settle_s
                elif time.monotonic() >= settle_until:
                    break
    finally:
        consumer.close()
    return records

"""`riskstream bench e2e` with two worker processes in one group, against the real Kafka broker and Elasticsearch
node: every document of every phase is counted, each worker holds its share of the partitions, and nothing of the
run is left behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from inference.bench import run_e2e_bench
from inference.settings import WorkerSettings
from riskstream.settings import CommonSettings
from tests.inference.helpers import wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_two_workers_share_the_benchmark_and_leave_nothing_behind(
    settings: CommonSettings, bundle_v1: tuple[Path, str]
) -> None:
    from kafka.admin import KafkaAdminClient

    from riskstream.es import make_client

    data = {name: getattr(settings, name) for name in type(settings).model_fields}
    ws = WorkerSettings(**data, bundle=bundle_v1[0], torch_threads=1, max_wait_ms=100, precision="fp32")
    admin = KafkaAdminClient(bootstrap_servers=ws.kafka_bootstrap.split(","))
    topics_before = set(admin.list_topics())
    worker_logs = Path(tempfile.gettempdir()).glob("riskstream-bench-worker-*.log")
    logs_before = set(worker_logs)

    result = run_e2e_bench(ws, n=60, latency_seconds=2.0, workers=2)

    assert result["workers"] == 2
    assert result["partitions"] == 6
    # both processes held partitions to the end: neither sat idle in the group nor left it
    assert result["group_at_end"] == {"state": "Stable", "members_with_partitions": 2}
    # the reference runs the workers' layout: two engine processes of one thread, over the same texts at once
    assert (result["engine_standalone_processes"], result["engine_standalone_threads"]) == (2, 1)
    assert all(rate > 0 for rate in result["engine_standalone_passes_docs_per_s"])
    assert result["sustained_docs_per_s"] > 0
    assert result["latency_seen"] == result["latency_documents"] >= 10  # every latency document became searchable
    assert 0 < result["p50_produce_to_searchable_s"] <= result["p95_produce_to_searchable_s"]
    # a loaded model and torch in each process; the total counts both
    assert result["worker_rss_peak_mb"] > 100
    assert result["workers_rss_peak_total_mb"] > 1.5 * result["worker_rss_peak_mb"]

    # topic deletion completes asynchronously on the broker
    wait_until(
        lambda: not {t for t in set(admin.list_topics()) - topics_before if t.startswith("bench-")},
        30,
        "the benchmark's topics to be deleted",
    )
    admin.close()
    # the workers' output is kept only when the run fails (or --worker-log names a file)
    assert set(Path(tempfile.gettempdir()).glob("riskstream-bench-worker-*.log")) == logs_before
    es = make_client(ws)
    assert not es.indices.get_alias(name="bench-docs-*", ignore_unavailable=True, allow_no_indices=True)

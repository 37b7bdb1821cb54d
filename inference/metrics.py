"""Prometheus metrics of one worker (its own registry, so several workers can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, start_http_server


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.docs = Counter(
            "riskstream_worker_documents", "Documents scored (rate() = docs/s).", ["channel"], registry=r
        )
        self.tokens = Counter("riskstream_worker_tokens", "Non-padding tokens scored (rate() = tokens/s).", registry=r)
        self.batch_size = Histogram(
            "riskstream_worker_batch_size",
            "Messages per micro-batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "riskstream_worker_batch_seconds", "Wall time of one micro-batch, parse to commit.", registry=r
        )
        self.queue_depth = Gauge(
            "riskstream_worker_queue_depth", "Messages received, not yet scored (the micro-batch filling).", registry=r
        )
        self.in_flight = Gauge(
            "riskstream_worker_batches_in_flight",
            "Scored micro-batches handed to the writer (Elasticsearch, Kafka), not yet committed.",
            registry=r,
        )
        self.lag = Gauge(
            "riskstream_worker_consumer_lag", "High watermark minus position, per partition.", ["partition"], registry=r
        )
        self.failures = Counter(
            "riskstream_worker_failures", "Failures by reason (dead letters, sinks, swaps).", ["reason"], registry=r
        )
        self.es_bulk_seconds = Histogram(
            "riskstream_worker_es_bulk_seconds", "Latency of one Elasticsearch bulk request.", registry=r
        )
        self.paused = Gauge("riskstream_worker_paused", "1 while consumption is paused by backpressure.", registry=r)
        self.model = Info("riskstream_worker_model", "The model version being served.", registry=r)
        self.swaps = Counter("riskstream_worker_model_swaps", "Successful hot swaps.", registry=r)
        # the process's CPU seconds and resident memory (process_cpu_seconds_total, process_resident_memory_bytes;
        # Linux): whether a worker that falls behind is bound by its CPU, and how close it runs to its memory limit
        ProcessCollector(registry=r)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        if port > 0:
            start_http_server(port, addr=host, registry=self.registry)

"""Settings of the inference worker, ``riskstream score`` and the inference benchmarks.

Every field is an environment variable (``RISKSTREAM_<NAME>``) and a CLI flag (``--name``); the description
states the trade-off, and is the flag's help text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from riskstream.settings import CommonSettings

Precision = Literal["fp32", "bf16", "fp16", "int8", "auto"]
DevicePref = Literal["auto", "cpu", "cuda"]


def _default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class EngineSettings(CommonSettings):
    """How the model runs: device, precision, threads and batch shapes."""

    device: DevicePref = Field(
        default="auto",
        description="Where to run the model: auto picks cuda when a GPU is visible, else cpu. Force cpu to keep a "
        "GPU free for training.",
    )
    precision: Precision = Field(
        default="auto",
        description="Numeric precision. auto: bf16 (fp16 if bf16 is unsupported) on GPU; on CPU bf16 (the encoder's "
        "weights cast once) where the CPU multiplies bf16 natively (AMX-BF16 or AVX512-BF16: measured 2.3-3.2x fp32, "
        "accuracy within 0.05 point), else fp32 (emulated bf16 is slower than fp32). int8 (dynamic quantization "
        "of the encoder's Linear layers, CPU only) is the fast path on CPUs without native bf16. `riskstream bench "
        "inference` measures speed and accuracy change side by side. With backend onnxruntime: fp32 or int8 (auto: "
        "fp32).",
    )
    torch_threads: int = Field(
        default_factory=_default_threads,
        description="torch intra-op threads (default: the cores this process may use). Fewer leaves room for "
        "other processes on the machine; more than the physical cores only adds contention.",
    )
    token_budget: int = Field(
        default=4096,
        gt=0,
        description="Max padded tokens (rows x longest row) in one forward pass. Larger batches amortise "
        "overheads and fill a GPU better; smaller ones cut latency and memory.",
    )
    pack_spread: float = Field(
        default=1.5,
        ge=0.0,
        description="Length bucketing within a forward pass: a pack that already holds 256 real tokens closes "
        "before a document longer than this many times its shortest (0 = off: packs fill the token budget). The "
        "few dozen documents of a light stream's micro-batch then go in packs of similar lengths instead of one "
        "padded to the longest: on a 2-core CPU (bf16) batches of 50 tweets scored 1.4-1.7x the documents/s, and "
        "end to end p95 latency at half rate fell from 2.1-2.8 s to 1.3-1.8 s. A backlog's large sorted windows "
        "still fill the budget. On a GPU, where padding costs less than another forward pass, 0 may do better "
        "(not measured).",
    )
    max_batch_docs: int = Field(
        default=128, description="Max documents in one forward pass, whatever their length (caps padding waste)."
    )
    sort_window: int = Field(
        default=1024,
        description="How many pending documents are sorted by length before packing (length bucketing). Larger "
        "windows pad less; results are always returned in input order.",
    )
    max_length: int | None = Field(
        default=None,
        description="Truncate documents to this many tokens (default: the bundle's max_length). Longer is more "
        "faithful on long articles, and quadratically dearer in attention.",
    )
    topk_probs: int = Field(
        default=5,
        description="For label sets larger than 10, keep only the top-k probabilities in the output (small "
        "documents in Elasticsearch); smaller sets always keep all.",
    )
    int8_fp32_modules: list[str] = Field(
        default_factory=list,
        description="With precision int8: encoder Linear layers kept in fp32, as fnmatch globs over module names "
        "(* also matches dots: 'encoder.layer.?.output.dense' is the FFN down-projections, "
        "'encoder.layer.*.output.dense' would add the attention outputs). Each kept layer gives back some of the "
        "int8 speed-up and some of its accuracy loss; `riskstream bench inference` measures both. Applies to both "
        "backends (onnxruntime: a fused attention is kept if any of its query/key/value matches).",
    )
    backend: Literal["torch", "onnxruntime"] = Field(
        default="torch",
        description="What runs the encoder. torch: every device and precision. onnxruntime (CPU, fp32 or int8): "
        "the encoder exported to a fused ONNX graph, exported once per bundle into the data dir's cache (about a "
        "minute, also at a hot swap); its int8 is the fastest CPU path on CPUs without VNNI/AMX.",
    )
    encoder_impl: Literal["auto", "lean", "transformers"] = Field(
        default="auto",
        description="What runs a torch-backend encoder. lean: BERT-family encoders (the base encoder and its "
        "fine-tunes) in plain PyTorch, loaded without importing transformers: about 6 s less at start-up and at each "
        "hot swap on a 2-core CPU, about 320 MB less worker memory, the same outputs to float rounding and the same "
        "speed per pass. transformers: its AutoModel, every architecture. auto: lean where it applies, else "
        "transformers.",
    )
    ort_spinning: bool = Field(
        default=True,
        description="onnxruntime backend: let its worker threads spin between operators (lower latency per batch; "
        "they burn CPU while waiting). Turn off when the worker shares a few cores with other busy processes.",
    )
    cpu_fusion: bool = Field(
        default=True,
        description="Lean encoder on CPU (fp32, bf16): run the feed-forward GELU, and in bf16 the residual "
        "additions, inside their matrix multiplies (oneDNN post-ops). Measured on a 2-core CPU: the engine 1.05-1.17x "
        "documents/s in bf16 and 1.01-1.05x in fp32, the worker end to end 1.13-1.15x; labels agree on 99.95-100% of "
        "documents. Checked against the plain path at start; off: the plain path.",
    )
    row_buckets: int = Field(
        default=0,
        ge=0,
        description="Lean encoder on CPU: pad each forward pass's token rows up to one of this many sizes per power "
        "of two (8: at most 12.5% more rows), so the matrix multiplies meet a few dozen shapes instead of one per "
        "pack. oneDNN builds a kernel for every new shape (about 3 ms each here) and keeps a bounded number of them. "
        "0 here (`bench inference` times warm passes over the same packs, where padding is the only cost); the "
        "worker and `riskstream score` use 8 unless set.",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the encoder (fp32/bf16/fp16; not int8): +15-30% documents/s measured on a 2-core "
        "CPU, for ~1 minute of compilation at start-up and at each hot swap. Worth it for a long-running worker, "
        "not for a short `riskstream score`.",
    )
    bundle: Path | None = Field(
        default=None,
        description="Serve this bundle directory instead of the registry's champion (no hot swap then).",
    )

    @field_validator("pack_spread")
    @classmethod
    def _spread_off_or_at_least_one(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError(f"pack_spread is 0 (off) or at least 1 (longest row over shortest), got {value}")
        return value

    @property
    def onnx_cache_dir(self) -> Path:
        """Where the onnxruntime backend keeps its exported encoders (per bundle digest; safe to delete)."""
        return self.data_dir / "cache" / "onnx"


class WorkerSettings(EngineSettings):
    """The streaming worker: Kafka in, Elasticsearch and Kafka out."""

    group_id: str = Field(
        default="riskstream-inference",
        description="Kafka consumer group. Workers with the same group share the raw topic's partitions.",
    )
    max_wait_ms: int = Field(
        default=200,
        description="Max time to wait for a micro-batch to fill before scoring what arrived. Lower is lower "
        "latency at light load; higher gives fuller (cheaper) batches.",
    )
    batch_token_budget: int = Field(
        default=49152,
        description="A micro-batch (one commit unit) closes when its documents hold this many tokens (estimated "
        "from characters, at most max_length each) or after max_wait_ms. The engine splits it into forward passes "
        "of token_budget. At light load batches close by age and stay small; under a backlog they fill to this "
        "budget (750-1,000 tweets). The engine alone scored batches of 1,000 at 15-30% more documents/s than "
        "batches of 300 on a 2-core CPU; end to end the difference was within the runs' spread.",
    )
    max_batch_messages: int = Field(
        default=2048, description="Max messages in one micro-batch (one ES bulk request, one commit)."
    )
    poll_max_records: int = Field(default=500, description="max_poll_records of the Kafka consumer.")
    row_buckets: int = Field(
        default=8,
        ge=0,
        description="Lean encoder on CPU: pad each forward pass's token rows up to one of this many sizes per power "
        "of two (8: at most 12.5% more rows; 0: off), so the matrix multiplies meet a few dozen shapes, whose "
        "kernels oneDNN's capped cache (onednn_cache_capacity) holds, instead of one per pack, each built anew "
        "(about 3 ms per kernel here). On a 2-core CPU with the cap of 64: the engine alone 516-553 docs/s with 8 "
        "against 453-468 without, the worker end to end 1.03x the sustained rate, p95 at half rate 1.32-1.39 s "
        "against 1.49-1.55 s, and 15-24% less memory (three interleaved rounds each).",
    )
    onednn_cache_capacity: int = Field(
        default=64,
        ge=1,
        description="How many compiled matrix-multiply kernels oneDNN keeps (ONEDNN_PRIMITIVE_CACHE_CAPACITY; "
        "oneDNN's own default is 1,024). On a CPU the bf16 engine runs through oneDNN, which compiles a kernel per "
        "matrix shape, and length-bucketed packs bring many shapes: with 1,024 a worker's memory kept growing "
        "past 1.5 GB. With 64, peak RSS fell 16-22% (1,435/1,501 to 1,201/1,172 MiB) for 0.5-5% of sustained "
        "rate and 4-5% of p95 at half rate (2-core CPU with AMX, two interleaved rounds). No effect on a GPU or "
        "in fp32 (not oneDNN there).",
    )
    top_up_wait_ms: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="How long a micro-batch about to close by age waits in one poll for records the broker already "
        "holds. Right after a busy batch the client's buffer often holds a single record (the fetch answered as "
        "soon as one arrived) while the rest still sit in the broker: with 0 that record is scored alone (20-25% "
        "of a light stream's batches on 2 loaded cores; 3-14% with 20). A batch that finds nothing more closes "
        "this much later; a backlog's polls return at once. Capped at max_wait_ms.",
    )
    pipeline_depth: int = Field(
        default=1,
        ge=0,
        le=8,
        description="How many scored micro-batches may be in the writer (Elasticsearch bulk, Kafka produce, not yet "
        "committed) while the model scores the next one. 1 overlaps the model with the sinks; 0 writes and commits "
        "each batch before polling again (the model idles during writes). Deeper only helps when the sinks' time "
        "varies a lot; each batch held is re-scored after a rebalance or crash.",
    )
    hotswap_interval_s: float = Field(
        default=10.0,
        description="How often the registry is polled for a new champion (0 = never). Shorter notices a promotion "
        "sooner at the cost of one small SQL query per interval.",
    )
    es_retry_max_s: float = Field(
        default=30.0,
        description="Max backoff between retries of a failed Elasticsearch bulk write. While it fails the worker "
        "pauses its partitions (stays in the group) and retries forever: documents are never dropped.",
    )
    es_bulk_timeout_s: float = Field(default=30.0, description="Timeout of one Elasticsearch bulk request.")
    dead_letter_max_bytes: int = Field(
        default=900_000,
        ge=16_384,
        description="A dead letter's JSON is cut to this size (the start of its payload kept, payload_truncated "
        "set; the whole message stays in the raw topic at its offset) so the dead-letter topic takes it: Kafka's "
        "default max.message.bytes is 1 MiB, and a message near that limit grows with the error and coordinates. "
        "Keep it under the dead-letter topic's max.message.bytes.",
    )
    metrics_port: int = Field(
        default=0,
        description="Port of the Prometheus /metrics endpoint on 127.0.0.1 (0 = off). One port per worker process.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address the metrics endpoint binds to.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a new consumer group starts: earliest scores the backlog, latest only new documents.",
    )
    idle_exit_s: float = Field(
        default=0.0,
        description="Exit cleanly after this many seconds without messages (0 = run forever). For batch jobs "
        "and benchmarks.",
    )
    gil_switch_interval_ms: float = Field(
        default=5.0,
        gt=0,
        le=100,
        description="The Python interpreter's thread switch interval in the worker process (5 is Python's own "
        "default). The model thread releases the GIL around every tensor operation; while another thread runs Python "
        "the model waits up to this long to get it back. Beside a pure-Python busy thread the engine scored 61 "
        "documents/s at 5 ms and 347-415 at 0.2 ms, but the worker's own threads are not that busy: end to end, "
        "0.2 ms sustained the same rate (252-277 against 230-276 documents/s) with a higher p95 (1.9-2.9 against "
        "2.0-2.2 s), so the default stays Python's.",
    )

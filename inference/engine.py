"""The scoring engine: one forward pass per document, both heads of its channel on one embedding.

How it is fast:

- **Tokenization overlaps compute.** A tokenizer thread (Hugging Face fast tokenizers run in Rust and release the
  GIL) tokenizes windows of documents, packs them and builds padded tensors, feeding a bounded queue; the calling
  thread only runs forward passes. The bound keeps memory flat when the model is the bottleneck.
- **Dynamic padding and length bucketing.** Each window of ``sort_window`` documents is sorted by token length and
  packed by token budget (:func:`inference.batching.pack_by_budget`), so a pack pads to its own longest row and
  rows of similar length travel together. ``pack_spread`` also closes a pack before a row longer than that many
  times its shortest (once it holds 256 tokens): the few dozen documents of a light stream's micro-batch then go in
  a few packs of similar lengths instead of one padded to the longest. Results come back in input order.
- **Precision per device.** GPU: weights cast to bf16 (fp16 where bf16 is unsupported), pinned host tensors copied
  with ``non_blocking=True`` so the copy of pack n+1 overlaps the compute of pack n. CPU: ``auto`` is bf16 where the
  CPU multiplies bf16 natively (AMX, AVX512-BF16), else fp32; ``bf16`` casts the encoder's weights once (as on a GPU:
  no autocast, whose fp32 LayerNorm/softmax/GELU cost a cast on either side); ``int8`` dynamically quantizes the
  encoder's Linear layers (``torch.ao.quantization.quantize_dynamic``). The heads and the pooling stay fp32.
- **ONNX Runtime backend** (``backend="onnxruntime"``, CPU, fp32 or int8): the encoder and pooling run as a fused
  ONNX graph, int8 through ONNX Runtime's quantized kernels (:mod:`inference.ort`); tokenization, packing and the
  heads are the same code as the torch backend, so the two are compared like for like.
- **Fused CPU kernels.** With the lean encoder on CPU (fp32, bf16), the feed-forward GELU, and in bf16 the residual
  additions, run as post-ops of their GEMMs (``riskstream.bert``; ``cpu_fusion=False`` turns it off).
- **Few GEMM shapes on CPU (optional).** oneDNN compiles a kernel per matrix shape; ``row_buckets`` pads each pass's
  token rows to one of a few sizes per power of two, so a stream of small, varied micro-batches reuses kernels.
- **Mixed channels in one pack.** All tasks share the encoder, so news and customer-service documents share the
  forward pass; each channel's two heads read only that channel's rows.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from inference.batching import pack_by_budget
from inference.device import Placement
from riskstream.bert import LeanBert
from riskstream.modeling import LabelMemory, LoadedBundle, calibrated_probs, mean_pool, tasks_for_channel
from schemas.records import CHANNELS, Prediction

if TYPE_CHECKING:
    from inference.ort import OrtEncoder

log = logging.getLogger(__name__)

MAX_FULL_PROBS = 10  # label sets up to this size keep every probability in the output


@dataclass(frozen=True)
class DocScore:
    """The engine's answer for one document."""

    sentiment: Prediction
    topic: Prediction
    risk_score: float | None
    uncertainty: float
    model_version: str
    tokens: int


@dataclass
class _Pack:
    indices: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: int


@dataclass(frozen=True)
class EngineStats:
    docs: int
    tokens: int
    padded_tokens: int
    packs: int


def int8_linear_names(encoder: nn.Module, keep_fp32: Sequence[str] = ()) -> list[str]:
    """Names of the encoder's Linear layers the int8 path quantizes: all but those matching a ``keep_fp32`` glob
    (fnmatch globs, where ``*`` also matches dots: ``encoder.layer.?.output.dense`` is the FFN down-projections,
    whose inputs carry outlier activations)."""
    import fnmatch

    return [
        name
        for name, module in encoder.named_modules()
        if isinstance(module, nn.Linear) and not any(fnmatch.fnmatchcase(name, pat) for pat in keep_fp32)
    ]


def quantize_encoder(encoder: nn.Module, keep_fp32: Sequence[str] = ()) -> nn.Module:
    """A copy of ``encoder`` with its Linear layers dynamically quantized to int8 (weights per output channel,
    activations per batch), except those matching ``keep_fp32``."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # per-channel weight scales: measured closer to fp32 than per-tensor on MiniLM (whose FFN weights have outlier
    # channels), and no slower
    spec = dict.fromkeys(int8_linear_names(encoder, keep_fp32), per_channel_dynamic_qconfig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(encoder.to("cpu"), spec, dtype=torch.qint8, inplace=False)


class Engine:
    """Serves one loaded bundle with one placement. Not thread-safe: one engine per scoring thread.

    The engine owns the bundle's modules: a bf16/fp16 or GPU placement converts them in place (no second copy of
    the weights in memory), so load one bundle per engine."""

    def __init__(
        self,
        bundle: LoadedBundle,
        placement: Placement,
        *,
        token_budget: int = 4096,
        pack_spread: float = 0.0,
        max_batch_docs: int = 128,
        sort_window: int = 1024,
        max_length: int | None = None,
        topk_probs: int = 5,
        queue_depth: int = 4,
        int8_fp32_modules: Sequence[str] = (),
        compile: bool = False,
        backend: str = "torch",
        onnx_cache: Path | None = None,
        ort_spinning: bool = True,
        cpu_fusion: bool = True,
        row_buckets: int = 0,
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.int8_fp32_modules = tuple(int8_fp32_modules)
        self.placement = placement
        self.token_budget = token_budget
        self.pack_spread = pack_spread
        self.max_batch_docs = max_batch_docs
        self.sort_window = sort_window
        self.max_length = max_length or bundle.manifest.max_length
        self.topk_probs = topk_probs
        self.queue_depth = queue_depth
        self.tokenizer = bundle.tokenizer
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.ort: OrtEncoder | None = None
        if backend == "onnxruntime":
            self.ort = self._prepare_ort(bundle, placement, onnx_cache, self.int8_fp32_modules, ort_spinning)
            self.encoder, self.heads = bundle.model.encoder, bundle.model.heads.float().eval()
        elif backend == "torch":
            self.encoder, self.heads = self._prepare(bundle.model, placement, self.int8_fp32_modules)
        else:
            raise ValueError(f"unknown backend {backend!r} (torch, onnxruntime)")
        # heads calibrated per source weigh their sources' temperatures by these, on the pooled embedding
        pooled_device = torch.device("cpu") if self.ort is not None else placement.device
        self.source_classifiers: dict[str, nn.Module] = dict(
            bundle.model.source_classifiers.to(pooled_device, dtype=torch.float32).eval().items()
        )
        # heads with a kNN vote compare the pooled embedding with their memory's (fp32, beside the pooled rows)
        self.memories: dict[str, LabelMemory] = {
            task: memory.to(pooled_device, dtype=torch.float32)
            for task, memory in bundle.model.memories.items()
            if isinstance(memory, LabelMemory)
        }
        self.compiled = False
        self._neg_index = {
            task: (spec.labels.index("negative") if "negative" in spec.labels else None)
            for task, spec in bundle.manifest.tasks.items()
        }
        self.last_stats = EngineStats(0, 0, 0, 0)
        # fused GEMM post-ops on CPU (riskstream.bert); Inductor fuses by itself when compiling
        self.fusion = "none"
        if cpu_fusion and not compile and self.ort is None and isinstance(self.encoder, LeanBert):
            self.fusion = self.encoder.fuse_cpu_kernels("auto")
        # a few GEMM shapes instead of one per pack: oneDNN compiles a kernel per shape on CPU (a GPU has no such cost)
        # (and none under torch.compile, whose dynamic shapes serve every size with one graph)
        lean_cpu = isinstance(self.encoder, LeanBert) and not placement.is_cuda and not compile
        self.row_buckets = row_buckets if lean_cpu else 0
        if isinstance(self.encoder, LeanBert):
            self.encoder.row_buckets = self.row_buckets
            log.info("lean encoder: fused CPU kernels %s, row buckets %d", self.fusion, self.row_buckets)
        if compile:
            self._compile()  # last: the warm-up scores through the whole engine

    # ---- set-up ---------------------------------------------------------------------------------------------

    @staticmethod
    def _prepare(
        model: nn.Module, placement: Placement, int8_fp32_modules: Sequence[str] = ()
    ) -> tuple[nn.Module, nn.ModuleDict]:
        encoder: nn.Module = model.encoder  # type: ignore[assignment]
        heads: nn.ModuleDict = model.heads  # type: ignore[assignment]
        if placement.precision == "int8":
            if placement.is_cuda:
                raise ValueError("int8 dynamic quantization runs on CPU only")
            encoder = quantize_encoder(encoder, int8_fp32_modules)
        else:
            encoder = encoder.to(placement.device, dtype=placement.weight_dtype)
        heads = heads.to(placement.device, dtype=torch.float32)
        encoder.eval()
        heads.eval()
        return encoder, heads

    @staticmethod
    def _prepare_ort(
        bundle: LoadedBundle,
        placement: Placement,
        cache: Path | None,
        int8_fp32_modules: Sequence[str],
        spinning: bool,
    ) -> OrtEncoder:
        from inference.ort import load_encoder

        if placement.is_cuda:
            raise ValueError("the onnxruntime backend runs on CPU (use the torch backend with bf16/fp16 on a GPU)")
        if placement.precision not in ("fp32", "int8"):
            raise ValueError(f"the onnxruntime backend runs fp32 or int8, not {placement.precision}")
        if cache is None:
            raise ValueError("the onnxruntime backend needs a cache directory for its exported encoders")
        return load_encoder(
            bundle,
            placement.precision,
            cache,
            threads=torch.get_num_threads(),
            keep_fp32=int8_fp32_modules,
            spinning=spinning,
        )

    def _compile(self) -> None:
        """``torch.compile`` the encoder (Inductor, dynamic shapes: packs vary in rows and length) and warm it up.

        Inductor fuses the encoder's elementwise work (GELU, LayerNorm, softmax, bias adds) into the neighbouring
        kernels; on this 2-core CPU that measured +15-30% documents/s in fp32. The price is ~1 minute of
        compilation at start-up (and at every hot swap, in the loader thread), so it suits the long-running
        worker, not a short ``riskstream score``. The int8 path is not compiled (its quantized kernels are opaque to
        Inductor)."""
        if self.placement.precision == "int8" or self.ort is not None:
            log.warning("compile is ignored with precision int8 and with the onnxruntime backend")
            return
        self.encoder = torch.compile(self.encoder, dynamic=True)  # type: ignore[assignment]
        self.compiled = True
        # two shapes: the first call compiles with dynamic dimensions, the second proves they are reused
        self.score(["warm up the compiled encoder"] * 3, ["news"] * 3)
        self.score(["a somewhat longer text to warm up another batch shape of the compiled encoder"] * 9, ["news"] * 9)

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        return {task: spec.labels for task, spec in self.bundle.manifest.tasks.items()}

    def warmup(self) -> None:
        """One tiny forward so the first real batch does not pay for lazy initialisation."""
        self.score(["warm up"], ["news"])

    # ---- tokenization (runs in the producer thread) -----------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(
            self.bundle.prepare(texts),
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        ids: list[list[int]] = enc["input_ids"]
        return ids

    def _make_pack(self, indices: list[int], ids: Sequence[list[int]]) -> _Pack:
        width = max(len(x) for x in ids)
        arr = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            arr[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        input_ids = torch.from_numpy(arr)
        attention_mask = torch.from_numpy(mask)
        if self.placement.is_cuda:
            input_ids, attention_mask = input_ids.pin_memory(), attention_mask.pin_memory()
        return _Pack(indices, input_ids, attention_mask, int(mask.sum()))

    def _packs(self, texts: Sequence[str]) -> Iterator[_Pack]:
        window = max(self.sort_window, 1)
        for start in range(0, len(texts), window):
            chunk_ids = self.tokenize(texts[start : start + window])
            lengths = [len(x) for x in chunk_ids]
            spread = self.pack_spread or None  # 0 = off
            for pack in pack_by_budget(lengths, self.token_budget, self.max_batch_docs, max_spread=spread):
                yield self._make_pack([start + i for i in pack], [chunk_ids[i] for i in pack])

    def _packs_threaded(self, texts: Sequence[str]) -> Iterator[_Pack]:
        """Packs produced by a tokenizer thread through a bounded queue (overlaps tokenization with compute)."""
        q: queue.Queue[_Pack | BaseException | None] = queue.Queue(maxsize=self.queue_depth)
        stop = threading.Event()

        def produce() -> None:
            try:
                for pack in self._packs(texts):
                    while not stop.is_set():
                        try:
                            q.put(pack, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(None)
            except BaseException as exc:  # handed to the consumer, re-raised there
                q.put(exc)

        thread = threading.Thread(target=produce, name="riskstream-tokenizer", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)

    # ---- scoring -------------------------------------------------------------------------------------------

    def score(
        self,
        texts: Sequence[str],
        channels: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> list[DocScore]:
        """Score documents; returns one :class:`DocScore` per input, in input order."""
        if len(texts) != len(channels):
            raise ValueError("texts and channels differ in length")
        for ch in set(channels):
            if ch not in CHANNELS:
                raise ValueError(f"unknown channel {ch!r} (expected one of {', '.join(CHANNELS)})")
            for task in tasks_for_channel(ch):
                if task not in self.bundle.manifest.tasks:
                    raise ValueError(f"model {self.version} has no head {task!r} for channel {ch!r}")
        if not texts:
            return []
        results: list[DocScore | None] = [None] * len(texts)
        docs = tokens = padded = n_packs = 0
        packs = self._packs_threaded(texts) if len(texts) > self.max_batch_docs else self._packs(texts)
        for pack in packs:
            for i, score in zip(pack.indices, self._forward(pack, [channels[i] for i in pack.indices]), strict=True):
                results[i] = score
            docs += len(pack.indices)
            tokens += pack.tokens
            padded += pack.input_ids.numel()
            n_packs += 1
            if progress is not None:
                progress(len(pack.indices))
        self.last_stats = EngineStats(docs, tokens, padded, n_packs)
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.ort is not None:
            return torch.from_numpy(self.ort(input_ids.numpy(), attention_mask.numpy()))
        device = self.placement.device
        ids = input_ids.to(device, non_blocking=True)
        mask = attention_mask.to(device, non_blocking=True)
        out = self.encoder(input_ids=ids, attention_mask=mask)
        # pooled in fp32 whatever the encoder's dtype: a bf16 sum over the tokens would lose the low bits
        return mean_pool(out.last_hidden_state.float(), mask)

    @torch.inference_mode()
    def _forward(self, pack: _Pack, channels: list[str]) -> list[DocScore]:
        pooled = self.embed(pack.input_ids, pack.attention_mask)
        lengths = pack.attention_mask.sum(dim=1).tolist()
        per_row: list[dict[str, Any]] = [{} for _ in channels]
        for channel in sorted(set(channels)):
            rows = [r for r, ch in enumerate(channels) if ch == channel]
            sub = pooled if len(rows) == len(channels) else pooled[torch.tensor(rows, device=pooled.device)]
            for task in tasks_for_channel(channel):
                spec, classifier = self.bundle.manifest.tasks[task], self.source_classifiers.get(task)
                memory = self.memories.get(task)
                probs = calibrated_probs(spec, self.heads[task](sub), sub, classifier, memory).cpu()
                for row, pred in zip(rows, self._predictions(task, probs), strict=True):
                    per_row[row][task] = pred
        out: list[DocScore] = []
        for row, channel in enumerate(channels):
            sent_task, topic_task = tasks_for_channel(channel)
            sent, sent_neg = per_row[row][sent_task]
            topic, _ = per_row[row][topic_task]
            margins = [m for m in (sent.margin, topic.margin) if m is not None]
            out.append(
                DocScore(
                    sentiment=sent,
                    topic=topic,
                    risk_score=sent_neg,
                    uncertainty=min(1.0, max(0.0, 1.0 - min(margins))) if margins else 1.0,
                    model_version=self.version,
                    tokens=int(lengths[row]),
                )
            )
        return out

    def _predictions(self, task: str, probs: torch.Tensor) -> list[tuple[Prediction, float | None]]:
        labels = self.bundle.manifest.tasks[task].labels
        k = min(2, len(labels))
        top_p, top_i = probs.topk(k, dim=-1)
        full = len(labels) <= MAX_FULL_PROBS
        kk = min(self.topk_probs, len(labels))
        if not full:
            keep_p, keep_i = probs.topk(kk, dim=-1)
            keep_pl, keep_il = keep_p.tolist(), keep_i.tolist()
        all_p = probs.tolist()
        tp, ti = top_p.tolist(), top_i.tolist()
        neg = self._neg_index.get(task)
        out: list[tuple[Prediction, float | None]] = []
        for r in range(len(all_p)):
            score = min(1.0, max(0.0, tp[r][0]))
            margin = tp[r][0] - tp[r][1] if k > 1 else 1.0
            if full:
                dist = {labels[j]: round(p, 6) for j, p in enumerate(all_p[r])}
            else:
                dist = {labels[j]: round(p, 6) for j, p in zip(keep_il[r], keep_pl[r], strict=True)}
            pred = Prediction.model_construct(label=labels[ti[r][0]], score=score, probs=dist, margin=margin)
            out.append((pred, None if neg is None else min(1.0, max(0.0, all_p[r][neg]))))
        return out


def build_engine(bundle: LoadedBundle, settings: Any, placement: Placement | None = None) -> Engine:
    """An engine configured from :class:`inference.settings.EngineSettings`."""
    from inference.device import place

    placement = placement or place(
        settings.device, settings.precision, settings.torch_threads, backend=settings.backend
    )
    return Engine(
        bundle,
        placement,
        token_budget=settings.token_budget,
        pack_spread=settings.pack_spread,
        max_batch_docs=settings.max_batch_docs,
        sort_window=settings.sort_window,
        max_length=settings.max_length,
        topk_probs=settings.topk_probs,
        int8_fp32_modules=settings.int8_fp32_modules,
        compile=settings.compile,
        backend=settings.backend,
        onnx_cache=settings.onnx_cache_dir,
        ort_spinning=settings.ort_spinning,
        cpu_fusion=settings.cpu_fusion,
        row_buckets=settings.row_buckets,
    )

"""The ONNX Runtime backend: the bundle's encoder (with mean pooling) exported to ONNX, fused and optionally
quantized to int8, cached per bundle, and run by an ONNX Runtime CPU session.

Why: on a CPU without VNNI/AMX (AVX2 only) PyTorch's dynamic int8 kernels reach only 1.25-1.45x its FP32 GEMM
ceiling, and its FP32 path pays for each unfused elementwise op of the encoder. ONNX Runtime's transformer
optimizer fuses attention (one QKV GEMM), bias+GELU, residual+LayerNorm and the embeddings into single kernels,
and its int8 MatMulInteger / QAttention kernels are faster on AVX2 (`riskstream bench inference --fast-path
onnx-int8` measures both backends side by side).

How a bundle becomes a session (once per bundle, variant and quantization settings; then from the cache):

1. the encoder is traced (``torch.onnx.export``, eager attention so that the padding mask is a graph input, not a
   branch taken while tracing) together with the mean pooling, dynamic in batch size and sequence length;
2. ``onnxruntime.transformers.optimizer`` fuses the graph (kept only if it still matches PyTorch);
3. for ``int8``, ``quantize_dynamic`` quantizes the weight GEMMs and fused attentions (int8 weights with one scale
   per output channel, activations quantized per batch at run time); the embedding tables and any layer named by
   ``int8_fp32_modules`` stay in FP32;
4. the result is checked against PyTorch on padded rows (FP32 must agree to cosine >= 0.99999; int8 must stay
   finite and close), written atomically into the cache with a sidecar that records its SHA-256, and re-verified
   against that checksum whenever it is loaded; a file that fails is rebuilt.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from riskstream.hashing import sha256_file
from riskstream.modeling import ENCODER_DIR, ArtifactError, LoadedBundle

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when the export recipe changes: old cache entries are then rebuilt, never reused
OPSET = 17
VARIANTS = ("fp32", "int8")
FP32_MIN_COSINE = 0.99999
INT8_MIN_COSINE = 0.9
VERIFY_TEXTS = (
    "Shares of the bank fell sharply after it cut its profit forecast.",
    "My card payment was declined twice today",
    "ok",
    "The central bank left interest rates unchanged on Thursday, citing persistent inflation in services.",
)


class OrtExportError(ArtifactError):
    """The encoder could not be exported, or the export does not reproduce PyTorch's output. An artifact error:
    a worker refuses such a model at a hot swap and keeps serving the current one."""


class _Pooled(nn.Module):
    """Encoder + mean pooling, the part of the model the ONNX graph holds (the heads stay in PyTorch)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.e = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.e(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def cache_key(bundle_sha256: str, variant: str, keep_fp32: Sequence[str]) -> str:
    """Names one export: the bundle, the variant, the layers kept in FP32 and the tool versions that made it."""
    import onnxruntime

    recipe = json.dumps(
        [EXPORT_FORMAT, OPSET, variant, sorted(keep_fp32), onnxruntime.__version__, torch.__version__.split("+")[0]]
    )
    return f"{bundle_sha256[:16]}-{variant}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def module_path(node: Any) -> str | None:
    """The PyTorch module a weight GEMM node of the exported graph came from (``encoder.layer.0.output.dense``),
    or None. Fused attention nodes map to their ``...attention.self`` module (whose query/key/value they hold)."""
    name = node.output[0] if node.op_type == "Attention" else node.name
    parts = name.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "e":
        return None
    return ".".join(parts[1:-1])


def _matches(path: str, op_type: str, globs: Sequence[str]) -> bool:
    names = [path]
    if op_type == "Attention":
        names += [f"{path}.{proj}" for proj in ("query", "key", "value")]
    return any(fnmatch.fnmatchcase(name, glob) for name in names for glob in globs)


def quantizable_nodes(model: Any, keep_fp32: Sequence[str]) -> tuple[list[str], list[str]]:
    """(nodes to quantize, nodes kept in FP32 by ``keep_fp32``): every MatMul with a constant weight and every
    fused Attention. Activation x activation MatMuls (unfused attention scores) are never quantized."""
    weights = {init.name for init in model.graph.initializer}
    quantize: list[str] = []
    kept: list[str] = []
    for node in model.graph.node:
        is_weight_gemm = node.op_type == "MatMul" and any(i in weights for i in node.input)
        if not (is_weight_gemm or node.op_type == "Attention"):
            continue
        path = module_path(node)
        if path is not None and _matches(path, node.op_type, keep_fp32):
            kept.append(node.name)
        else:
            quantize.append(node.name)
    return quantize, kept


def _verify_inputs(tokenizer: Any, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    enc = tokenizer(list(VERIFY_TEXTS), truncation=True, max_length=max_length, padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(norm, 1e-12))


class _QuietOnnxTools(logging.Filter):
    """ONNX Runtime's optimizer and quantizer log every tensor they touch (at INFO, some on the root logger) and
    advise on pre-processing (at WARNING); while exporting, drop their records below ERROR. Installed on the
    handlers, so it sees records from every logger; riskstream's own records pass untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"{os.sep}onnxruntime{os.sep}" not in record.pathname


@contextlib.contextmanager
def _quiet_onnx_tools() -> Iterator[None]:
    handlers = list(logging.getLogger().handlers)
    quiet = _QuietOnnxTools()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def new_session(path: Path, threads: int, spinning: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings from the optimizer about unused initializers are noise here
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export(bundle: LoadedBundle, variant: str, out: Path, keep_fp32: Sequence[str] = ()) -> dict[str, Any]:
    """Export ``bundle``'s encoder to ``out`` (see the module docstring); returns the sidecar's facts."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r} (one of {', '.join(VARIANTS)})")
    started = time.monotonic()
    encoder = AutoModel.from_pretrained(
        bundle.path / ENCODER_DIR, local_files_only=True, attn_implementation="eager"
    ).eval()
    cfg = encoder.config
    wrapper = _Pooled(encoder).eval()
    tokenizer = AutoTokenizer.from_pretrained(bundle.path / ENCODER_DIR, local_files_only=True)
    ids, mask = _verify_inputs(tokenizer, bundle.manifest.max_length)
    with torch.inference_mode():
        reference = wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    with tempfile.TemporaryDirectory(prefix="riskstream-onnx-", dir=out.parent) as tmp:
        raw = Path(tmp) / "encoder.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes; verified below
            torch.onnx.export(
                wrapper,
                (torch.from_numpy(ids), torch.from_numpy(mask)),
                str(raw),
                input_names=["input_ids", "attention_mask"],
                output_names=["pooled"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "pooled": {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
        graph, fused = raw, False
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            optimized = optimize_model(
                str(raw),
                model_type="bert",
                num_heads=int(getattr(cfg, "num_attention_heads", 0) or 0),
                hidden_size=int(getattr(cfg, "hidden_size", 0) or 0),
                opt_level=1,
            )
            candidate = Path(tmp) / "encoder.fused.onnx"
            optimized.save_model_to_file(str(candidate))
            cos = _cosines(
                new_session(candidate, 1).run(None, {"input_ids": ids, "attention_mask": mask})[0], reference
            )
            if float(cos.min()) >= FP32_MIN_COSINE:
                graph, fused = candidate, True
            else:
                log.warning(
                    "the fused ONNX graph disagrees with PyTorch (cosine %.5f): using the unfused graph", cos.min()
                )
        except Exception as exc:
            log.warning("ONNX Runtime could not fuse the encoder (%s): using the unfused graph", exc)

        quantized: list[str] = []
        kept: list[str] = []
        if variant == "int8":
            model = onnx.load(str(graph))
            quantized, kept = quantizable_nodes(model, keep_fp32)
            target = Path(tmp) / "encoder.int8.onnx"
            quantize_dynamic(
                str(graph),
                str(target),
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_quantize=quantized,
                op_types_to_quantize=["MatMul", "Attention"],
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            graph = target

        got = new_session(graph, 1).run(None, {"input_ids": ids, "attention_mask": mask})[0]
        cos = _cosines(got, reference)
        floor = FP32_MIN_COSINE if variant == "fp32" else INT8_MIN_COSINE
        if not np.isfinite(got).all() or float(cos.min()) < floor:
            raise OrtExportError(
                f"the {variant} ONNX export of {bundle.version} does not reproduce PyTorch "
                f"(min cosine {float(cos.min()):.5f} < {floor})"
            )
        facts = {
            "bundle_version": bundle.version,
            "bundle_sha256": bundle.sha256,
            "variant": variant,
            "fused": fused,
            "quantized_nodes": len(quantized),
            "fp32_kept_nodes": kept,
            "verify_min_cosine": round(float(cos.min()), 6),
            "export_seconds": round(time.monotonic() - started, 1),
            "sha256": sha256_file(graph),
        }
        os.replace(graph, out)
    return facts


def cached_export(bundle: LoadedBundle, variant: str, cache_dir: Path, keep_fp32: Sequence[str] = ()) -> Path:
    """The cached ONNX file for this bundle and variant, exported first if missing or failing its checksum."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(bundle.sha256, variant, keep_fp32)
    path = cache_dir / f"{key}.onnx"
    sidecar = cache_dir / f"{key}.json"
    if path.is_file() and sidecar.is_file():
        try:
            expected = json.loads(sidecar.read_text(encoding="utf-8"))["sha256"]
        except (ValueError, KeyError):
            expected = None
        if expected == sha256_file(path):
            log.info("ONNX %s encoder of %s from the cache (%s)", variant, bundle.version, path)
            return path
        log.warning("cached ONNX file %s fails its checksum: exporting it again", path)
    log.info("exporting the encoder of %s to ONNX (%s); this is done once per bundle", bundle.version, variant)
    try:
        with _quiet_onnx_tools():
            facts = export(bundle, variant, path, keep_fp32)
    except OrtExportError:
        raise
    except Exception as exc:  # torch.onnx, the optimizer and the quantizer raise many kinds
        raise OrtExportError(f"the encoder of {bundle.version} cannot be exported to ONNX ({variant}): {exc}") from exc
    tmp = sidecar.with_suffix(".json.partial")
    tmp.write_text(json.dumps(facts, indent=2), encoding="utf-8")
    os.replace(tmp, sidecar)
    log.info(
        "ONNX %s export of %s: fused=%s, %d int8 nodes, min cosine vs PyTorch %.5f, %.0f s",
        variant,
        bundle.version,
        facts["fused"],
        facts["quantized_nodes"],
        facts["verify_min_cosine"],
        facts["export_seconds"],
    )
    return path


@dataclass
class OrtEncoder:
    """Runs the exported encoder: (input_ids, attention_mask) int64 arrays -> mean-pooled float32 embeddings."""

    session: Any
    path: Path

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
        return out


def load_encoder(
    bundle: LoadedBundle,
    variant: str,
    cache_dir: Path,
    *,
    threads: int,
    keep_fp32: Sequence[str] = (),
    spinning: bool = True,
) -> OrtEncoder:
    path = cached_export(bundle, variant, cache_dir, keep_fp32)
    return OrtEncoder(new_session(path, threads, spinning), path)

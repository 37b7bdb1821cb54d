"""A BERT encoder for inference in plain PyTorch, loaded from a Hugging Face directory without transformers.

Why it exists: importing transformers costs about 6 s of a process's start on a 2-core CPU (it pulls in
scikit-learn, scipy and ``torch._dynamo``), longer than scoring a few thousand short documents takes. The serving
engine (the worker at start and at each hot swap, and ``riskstream score``) needs only the forward pass of a BERT
encoder, which is a few dozen lines of PyTorch. Training, evaluation and the ONNX export keep using transformers.

What it covers: ``model_type`` ``bert`` (all-MiniLM-L6-v2, the base encoder, and BERT-base/large fine-tunes) with
absolute position embeddings and a GELU feed-forward, weights in ``model.safetensors``. :func:`lean_support`
says why a directory is not covered, and the loader falls back to transformers for it. The output equals
transformers' ``BertModel`` (``last_hidden_state``) to float rounding: ``tests/inference/test_lean_bert.py``
compares the two on the base encoder, and the engine's answers on either encoder.

The module tree and parameter names are transformers' (``encoder.layer.3.attention.self.query``), so the weights
load as saved and the int8 path's ``int8_fp32_modules`` globs mean the same with either encoder; there is no pooler
(the product mean-pools). A fused QKV projection (one GEMM of three times the width) was tried and dropped: the
GEMM is faster, but attention over the strided query/key/value views it yields was slower by more, in fp32 and bf16.

**Fused CPU kernels** (:meth:`LeanBert.fuse_cpu_kernels`, which the serving engine turns on for CPU placements): the
feed-forward's GELU runs inside its GEMM, and in bf16 the residual additions of both output projections too, as
oneDNN post-ops (``torch.ops.mkldnn._linear_pointwise``, the kernels PyTorch's Inductor emits for the same
patterns on CPU). An unfused bf16 GELU is a separate pass over the 4x-wide activations that took longer than the
GEMM before it. Measured on the engine (2,000 tweets, 2-core Xeon with AMX): bf16 1.05-1.17x documents/s, fp32
1.01-1.05x (GELU only; the fused residual addition is no faster in fp32); labels agree on 99.95% (bf16) and 100%
(fp32). The fused path is inference-only, needs PyTorch built with oneDNN, and checks itself against the plain one
when turned on, falling back to it if the operator is missing or disagrees.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
FUSIONS = ("none", "gelu", "gelu+add")
_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    gelu_approximate: str
    pad_token_id: int

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> BertConfig:
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            gelu_approximate=_ACTIVATIONS[str(cfg.get("hidden_act", "gelu"))],
            pad_token_id=int(cfg.get("pad_token_id") or 0),
        )


def lean_support(encoder_dir: Path) -> str | None:
    """``None`` if :class:`LeanBert` can load ``encoder_dir``; else why not (the caller falls back to transformers)."""
    config_path = encoder_dir / "config.json"
    if not config_path.is_file():
        return "no config.json"
    if not (encoder_dir / WEIGHTS_FILE).is_file():
        return f"no {WEIGHTS_FILE}"
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return f"config.json is unreadable: {exc}"
    if cfg.get("model_type") != "bert":
        return f"model_type {cfg.get('model_type')!r} is not bert"
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {cfg.get('position_embedding_type')!r} is not absolute"
    if cfg.get("hidden_act", "gelu") not in _ACTIVATIONS:
        return f"hidden_act {cfg.get('hidden_act')!r} is not a GELU"
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        return "a decoder or cross-attention configuration"
    return None


@dataclass
class EncoderOutput:
    """What the engine reads from an encoder call (the same attribute name as transformers' output)."""

    last_hidden_state: torch.Tensor


class _Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        length = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:length].unsqueeze(0)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


def bucket_rows(rows: int, steps_per_octave: int) -> int:
    """``rows`` rounded up to the next of ``steps_per_octave`` evenly spaced sizes per power of two (at least a
    multiple of 8): 8 steps give sizes ..., 512, 576, 640, ..., 960, 1024, 1152, ..., padding at most 12.5%."""
    if steps_per_octave <= 0 or rows <= 8:
        return rows
    step = max(8, (1 << (rows.bit_length() - 1)) // steps_per_octave)
    return -(-rows // step) * step


class _SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
        """``x``: the pack's rows (``batch * length`` of them, then any bucket padding), one per token position."""
        rows, width = batch * length, x.shape[1]
        head_dim = width // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (rows, width) -> (batch, heads, length, head_dim)
            return t[:rows].view(batch, length, self.heads, head_dim).transpose(1, 2)

        out = functional.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=mask
        ).transpose(1, 2)
        if x.shape[0] == rows:
            return out.reshape(rows, width)
        # the heads' outputs go back into a buffer of the bucket's size (the same one copy as the reshape above);
        # its padding rows are zeroed so that no layer ever computes on stale memory
        buffer = x.new_empty(x.shape)
        buffer[:rows].view(batch, length, self.heads, head_dim).copy_(out)
        buffer[rows:].zero_()
        return buffer


class _DenseNorm(nn.Module):
    """``LayerNorm(residual + dense(x))``: transformers' ``BertSelfOutput`` and ``BertOutput``."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)
        self.fuse_add = False  # the residual addition as a post-op of the GEMM (CPU, oneDNN)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.fuse_add:
            y = torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.dense.weight, self.dense.bias, "add")
            return self.LayerNorm(y)
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(cfg)  # transformers' module name, kept for the int8 globs
        self.output = _DenseNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
        return self.output(self.self(x, mask, batch, length), x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.approximate = cfg.gelu_approximate
        self.fuse_gelu = False  # the GELU as a post-op of the GEMM (CPU, oneDNN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse_gelu:
            return torch.ops.mkldnn._linear_pointwise(
                x, self.dense.weight, self.dense.bias, "gelu", [], self.approximate
            )
        return functional.gelu(self.dense(x), approximate=self.approximate)


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
        x = self.attention(x, mask, batch, length)
        return self.output(self.intermediate(x), x)


class _Stack(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class LeanBert(nn.Module):
    """BERT's encoder for inference: ``(input_ids, attention_mask) -> last_hidden_state``. No dropout, no pooler.

    Between the embeddings and the output the hidden states are one row per token position, ``(batch * length,
    width)``: the dense layers see a 2-D matrix, as their GEMMs do anyway. With ``row_buckets`` (steps per power of
    two, 0 = off) that matrix is padded to the next bucket size (:func:`bucket_rows`), so the GEMMs meet a few
    dozen shapes instead of one per pack: oneDNN builds and caches a kernel per shape, which on a stream of small
    micro-batches cost more than the multiplications themselves (see ``docs/inference.md``)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Stack(cfg)
        self.fusion = "none"
        self.row_buckets = 0

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderOutput:
        embedded = self.embeddings(input_ids, token_type_ids)
        batch, length, width = embedded.shape
        rows = batch * length
        x = embedded.reshape(rows, width)
        padded = bucket_rows(rows, self.row_buckets)
        if padded > rows:
            x = torch.cat([x, x.new_zeros(padded - rows, width)])
        mask: torch.Tensor | None = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # additive mask in the activations' dtype, one row per query position (as transformers builds it for
            # SDPA; measured a little faster than a mask broadcast over the query positions)
            keep = attention_mask[:, None, None, :].to(torch.bool).expand(batch, 1, length, length)
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, torch.finfo(x.dtype).min)
        for layer in self.encoder.layer:
            x = layer(x, mask, batch, length)
        return EncoderOutput(last_hidden_state=x[:rows].view(batch, length, width))

    def fuse_cpu_kernels(self, mode: str = "auto") -> str:
        """Run the feed-forward GELU (``gelu``), and also the output projections' residual additions
        (``gelu+add``), as post-ops of their GEMMs; ``none`` restores the plain path. ``auto``: ``gelu+add`` for
        bf16 weights, ``gelu`` for fp32 (measured fastest for each), ``none`` for anything else.

        For inference on CPU only (no autograd through the fused operator). Before switching, the fused path is
        checked against the plain one on a small random input; if the operator is missing or disagrees, the plain
        path stays and a warning says why. Returns the mode in effect."""
        dense = self._layers()[0].intermediate.dense
        if mode == "auto":
            # a quantized encoder's Linear layers are other modules, with kernels of their own
            mode = "none"
            if type(dense) is nn.Linear and dense.weight.device.type == "cpu":
                mode = {torch.bfloat16: "gelu+add", torch.float32: "gelu"}.get(dense.weight.dtype, "none")
        if mode not in FUSIONS:
            raise ValueError(f"unknown fusion {mode!r} (expected one of {', '.join(FUSIONS)} or auto)")
        if mode != "none":
            why = self._fusion_mismatch(mode)
            if why is not None:
                log.warning("fused CPU kernels are off (%s): the plain path serves", why)
                mode = "none"
        self._set_fusion(mode)
        return mode

    def _layers(self) -> list[_Layer]:
        return [layer for layer in self.encoder.layer if isinstance(layer, _Layer)]

    def _set_fusion(self, mode: str) -> None:
        for layer in self._layers():
            layer.intermediate.fuse_gelu = mode in ("gelu", "gelu+add")
            layer.attention.output.fuse_add = layer.output.fuse_add = mode == "gelu+add"
        self.fusion = mode

    def _fusion_mismatch(self, mode: str) -> str | None:
        """Why ``mode`` cannot serve (the fused operator missing, failing or disagreeing with the plain path on a
        small random input), or ``None``."""
        dense = self._layers()[0].intermediate.dense
        if type(dense) is not nn.Linear:
            return f"the encoder's Linear layers are {type(dense).__name__}"
        weight = dense.weight
        if weight.device.type != "cpu":
            return f"the weights are on {weight.device.type}, the fused kernels are for CPU"
        if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            return "this PyTorch has no oneDNN linear_pointwise operator"
        previous = self.fusion
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.config.vocab_size, (2, 12), generator=generator)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0
        try:
            with torch.inference_mode():
                self._set_fusion("none")
                plain = self(ids, mask).last_hidden_state.float()
                self._set_fusion(mode)
                fused = self(ids, mask).last_hidden_state.float()
        except RuntimeError as exc:
            return f"the fused operator failed: {exc}"
        finally:
            self._set_fusion(previous)
        # relative to the hidden states' size: bf16 carries 8 bits of mantissa, and the fused path rounds once where
        # the plain one rounds twice (measured here: 0.03 at a largest value of 6, 0 in fp32)
        scale = max(1.0, float(plain.abs().max()))
        tolerance = (1e-4 if weight.dtype == torch.float32 else 0.05) * scale
        worst = float((plain - fused).abs().max())
        if not worst <= tolerance:
            return f"it differs from the plain path by {worst:.3g} on a test input (tolerance {tolerance:.3g})"
        return None

    @classmethod
    def from_pretrained(cls, encoder_dir: Path) -> LeanBert:
        """Load a Hugging Face BERT directory (``config.json`` and ``model.safetensors``); raises ``ValueError`` for
        a directory :func:`lean_support` rejects and ``RuntimeError`` for a weight file whose tensors do not match."""
        from safetensors.torch import load_file

        why = lean_support(encoder_dir)
        if why is not None:
            raise ValueError(f"{encoder_dir}: not loadable without transformers ({why})")
        cfg = BertConfig.from_dict(json.loads((encoder_dir / "config.json").read_text(encoding="utf-8")))
        with _skip_init():  # every parameter is overwritten below
            model = cls(cfg)
        # the file's tensors as they are: no second copy of the weights while loading (then fp32 whatever the file
        # holds, as the engine's casts and the int8 path expect; a no-op for an fp32 file)
        model.load_state_dict(_map_state(load_file(str(encoder_dir / WEIGHTS_FILE))), assign=True)
        return model.float().eval()


_INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "ones_", "zeros_")


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Modules built inside leave their parameters uninitialised (``torch.empty``'s memory): for modules whose every
    parameter is loaded next. The random initialisation of the encoder cost 0.1 s of a `riskstream score` here.
    transformers' ``no_init_weights`` does the same; building on the meta device instead imports torch._dynamo, a
    second more. It swaps ``torch.nn.init``'s functions for the process while it runs (a fraction of a second), so
    no other thread should build modules meanwhile: none does in the worker, whose loader thread is the only one
    that builds any."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}

    def keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, keep)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _map_state(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ``BertModel`` state dict (with or without the ``bert.`` prefix of a task model; old checkpoints
    name LayerNorm parameters gamma/beta) -> :class:`LeanBert`'s: the same names, without the pooler."""
    prefix = "bert." if any(k.startswith("bert.") for k in raw) else ""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        if not key.startswith(prefix):
            continue
        name = (
            key[len(prefix) :]
            .replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias")
        )
        if name.startswith(("embeddings.", "encoder.layer.")) and not name.endswith("position_ids"):
            out[name] = tensor
    return out

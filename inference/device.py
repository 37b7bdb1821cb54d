"""Device and precision selection (cuda > cpu unless forced), and thread settings.

``auto`` precision is the fastest precision that keeps the model's answers: bf16 (fp16 where bf16 is unsupported)
on a GPU; on a CPU, bf16 where the CPU multiplies bf16 natively (AMX-BF16, AVX512-BF16:
:mod:`riskstream.hardware`), fp32 elsewhere, where emulated bf16 is slower than fp32. ``riskstream bench
inference`` measures both, and their agreement, side by side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from riskstream.hardware import has_native_bf16

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16 | int8

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def weight_dtype(self) -> torch.dtype:
        """dtype of the encoder's weights: bf16 and fp16 cast the encoder once, on CPU as on GPU (the heads and the
        pooling stay fp32). On CPU this measured 1.65x bf16 *autocast*, whose fp32 LayerNorm, softmax and GELU
        each cost a cast on the way in and out."""
        if self.precision == "bf16":
            return torch.bfloat16
        if self.is_cuda and self.precision == "fp16":
            return torch.float16
        return torch.float32


def select_device(preference: str, *, cuda_available: bool | None = None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error, not a silent fallback."""
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda":
        if not available:
            raise RuntimeError("device=cuda was requested but no CUDA device is visible")
        return torch.device("cuda")
    if preference != "auto":
        raise ValueError(f"unknown device {preference!r} (auto, cpu, cuda)")
    return torch.device("cuda" if available else "cpu")


def resolve_precision(
    precision: str, device: torch.device, *, cuda_bf16: bool | None = None, cpu_bf16: bool | None = None
) -> str:
    """The precision to run: ``auto`` is bf16 (fp16 when bf16 is unsupported) on GPU; on CPU bf16 when the CPU has
    native bf16 (``cpu_bf16``, detected when not given), else fp32."""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if precision in ("auto", "bf16"):
            return "bf16" if bf16_ok else "fp16"
        if precision == "int8":
            raise ValueError("int8 dynamic quantization is a CPU path; use bf16/fp16 on GPU")
        return precision
    native_bf16 = has_native_bf16() if cpu_bf16 is None else cpu_bf16
    if precision == "auto":
        return "bf16" if native_bf16 else "fp32"
    if precision == "fp16":
        raise ValueError("fp16 on CPU is slower than fp32; use bf16 or int8 for the CPU fast path")
    if precision == "bf16" and not native_bf16:
        log.warning("precision bf16 on a CPU without native bf16 (AMX/AVX512-BF16) is emulated and slower than fp32")
    return precision


def place(device_pref: str, precision: str, threads: int | None = None, *, backend: str = "torch") -> Placement:
    """Device, precision and threads for an engine. With the onnxruntime backend (fp32 or int8 only), ``auto``
    precision is fp32."""
    device = select_device(device_pref)
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)
    if backend == "onnxruntime" and precision == "auto":
        precision = "fp32"
    resolved = resolve_precision(precision, device)
    log.info("inference on %s, precision %s, %d torch threads", device, resolved, torch.get_num_threads())
    return Placement(device=device, precision=resolved)

"""Device and precision selection (cuda > cpu unless forced), and thread settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

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
        """dtype of the weights: on GPU the model is cast; on CPU weights stay fp32 (bf16 runs under autocast)."""
        if self.is_cuda and self.precision == "bf16":
            return torch.bfloat16
        if self.is_cuda and self.precision == "fp16":
            return torch.float16
        return torch.float32

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        if not self.is_cuda and self.precision == "bf16":
            return torch.bfloat16
        return None


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


def resolve_precision(precision: str, device: torch.device, *, cuda_bf16: bool | None = None) -> str:
    """The precision to run: ``auto`` is bf16 (fp16 when bf16 is unsupported) on GPU and fp32 on CPU."""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if precision in ("auto", "bf16"):
            return "bf16" if bf16_ok else "fp16"
        if precision == "int8":
            raise ValueError("int8 dynamic quantization is a CPU path; use bf16/fp16 on GPU")
        return precision
    if precision == "auto":
        return "fp32"
    if precision == "fp16":
        raise ValueError("fp16 on CPU is slower than fp32; use bf16 or int8 for the CPU fast path")
    return precision


def place(device_pref: str, precision: str, threads: int | None = None) -> Placement:
    device = select_device(device_pref)
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)
    resolved = resolve_precision(precision, device)
    log.info("inference on %s, precision %s, %d torch threads", device, resolved, torch.get_num_threads())
    return Placement(device=device, precision=resolved)

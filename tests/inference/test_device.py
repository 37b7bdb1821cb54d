"""Device and precision selection (pure: availability is injected)."""

from __future__ import annotations

import pytest
import torch

from inference.device import Placement, resolve_precision, select_device


def test_auto_prefers_cuda_when_visible() -> None:
    assert select_device("auto", cuda_available=True).type == "cuda"
    assert select_device("auto", cuda_available=False).type == "cpu"
    assert select_device("cpu", cuda_available=True).type == "cpu"


def test_forcing_cuda_without_a_gpu_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no CUDA"):
        select_device("cuda", cuda_available=False)


def test_gpu_precision_is_bf16_else_fp16() -> None:
    gpu = torch.device("cuda")
    assert resolve_precision("auto", gpu, cuda_bf16=True) == "bf16"
    assert resolve_precision("auto", gpu, cuda_bf16=False) == "fp16"
    assert Placement(gpu, "fp16").weight_dtype == torch.float16
    with pytest.raises(ValueError):
        resolve_precision("int8", gpu, cuda_bf16=True)


def test_cpu_precision_defaults_to_fp32_and_runs_bf16_as_autocast() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("int8", cpu) == "int8"
    bf16 = Placement(cpu, "bf16")
    assert bf16.weight_dtype == torch.float32 and bf16.autocast_dtype == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_precision("fp16", cpu)

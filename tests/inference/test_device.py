"""Device and precision selection (pure: availability is injected)."""

from __future__ import annotations

import pytest
import torch

from inference.device import Placement, place, resolve_precision, select_device
from riskstream.hardware import has_native_bf16, parse_cpuinfo


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


def test_cpu_auto_precision_is_bf16_only_where_the_cpu_has_native_bf16() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, cpu_bf16=True) == "bf16"
    assert resolve_precision("auto", cpu, cpu_bf16=False) == "fp32"
    # an explicit choice is kept either way (emulated bf16 is slow, but it is what was asked for)
    assert resolve_precision("fp32", cpu, cpu_bf16=True) == "fp32"
    assert resolve_precision("bf16", cpu, cpu_bf16=False) == "bf16"


def test_auto_with_the_onnxruntime_backend_is_fp32_whatever_the_cpu() -> None:
    # onnxruntime runs fp32 or int8; bf16 there would be refused when the engine is built
    assert place("cpu", "auto", backend="onnxruntime").precision == "fp32"


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    sapphire_rapids = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_int8\n"
    epyc_zen2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu avx2 fma\n"
    model, flags = parse_cpuinfo(sapphire_rapids)
    assert model == "Intel(R) Xeon(R)" and has_native_bf16(flags)
    assert not has_native_bf16(parse_cpuinfo(epyc_zen2)[1])
    assert has_native_bf16({"avx512_bf16"})  # Cooper Lake, Zen 4
    assert parse_cpuinfo("") == ("", frozenset())


def test_bf16_casts_the_weights_on_cpu_as_on_gpu_and_cpu_refuses_fp16() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("int8", cpu) == "int8"
    bf16 = Placement(cpu, "bf16")
    assert (
        bf16.weight_dtype == torch.bfloat16 and Placement(torch.device("cuda"), "bf16").weight_dtype == torch.bfloat16
    )
    assert Placement(cpu, "fp32").weight_dtype == torch.float32 and Placement(cpu, "int8").weight_dtype == torch.float32
    with pytest.raises(ValueError):
        resolve_precision("fp16", cpu)

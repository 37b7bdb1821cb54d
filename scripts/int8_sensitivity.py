"""Which encoder Linear layers to keep in fp32 on the int8 path: accuracy change and agreement per DEV set.

Usage: HF_HUB_OFFLINE=1 RISKSTREAM_SEED_DATA=../shared/data .venv/bin/python scripts/int8_sensitivity.py BUNDLE_DIR \
           [--backend torch|onnxruntime] [--onnx-cache DIR]

Tunes ``int8_fp32_modules`` on the dev splits (never test), with the benchmark's own accuracy comparison
(:func:`inference.bench.accuracy_change`). `riskstream bench inference --int8-fp32-modules '[...]'` then measures
the chosen variant's speed side by side with fp32.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from inference.bench import accuracy_change
from inference.device import Placement
from inference.engine import Engine
from riskstream.modeling import load_bundle

VARIANTS: dict[str, list[str]] = {
    "int8_all": [],
    "keep_ffn_out": ["encoder.layer.?.output.dense"],
    "keep_ffn_in": ["encoder.layer.?.intermediate.dense"],
    "keep_attention": ["encoder.layer.?.attention.*"],
    "keep_first_layer": ["encoder.layer.0.*"],
    "keep_last_layer": ["encoder.layer.5.*"],
}


def main(bundle_path: Path, seed: Path, backend: str = "torch", onnx_cache: Path | None = None) -> dict[str, object]:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    engines = {"fp32": Engine(load_bundle(bundle_path), Placement(torch.device("cpu"), "fp32"))}
    for name, keep in VARIANTS.items():
        engines[name] = Engine(
            load_bundle(bundle_path, verify=False),
            Placement(torch.device("cpu"), "int8"),
            int8_fp32_modules=keep,
            backend=backend,
            onnx_cache=onnx_cache,
        )
    dev = accuracy_change(engines, seed, max_per_set=100_000, split="dev")
    return {"backend": backend, "variants": VARIANTS, "dev": dev}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--onnx-cache", type=Path, default=Path("onnx-cache"), help="onnxruntime exports go here")
    args = parser.parse_args()
    seed = Path(os.environ.get("RISKSTREAM_SEED_DATA", "../shared/data"))
    print(json.dumps(main(args.bundle, seed, args.backend, args.onnx_cache.resolve()), indent=2))

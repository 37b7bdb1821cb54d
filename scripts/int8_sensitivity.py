"""Which encoder Linear layers to keep in fp32 on the int8 path: accuracy change and prediction flips per DEV set.

Usage: HF_HUB_OFFLINE=1 RISKSTREAM_SEED_DATA=../shared/data .venv/bin/python scripts/int8_sensitivity.py BUNDLE_DIR

Tunes ``int8_fp32_modules`` on the dev splits (never test). Speed figures are indicative only: the variants run
one after another, so load on the machine shows up in them; `riskstream bench inference` measures the chosen one
side by side with fp32.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

from inference.bench import ACCURACY_SETS
from inference.device import Placement
from inference.engine import Engine
from riskstream.modeling import load_bundle

CONFIGS: dict[str, list[str] | None] = {
    "fp32": None,
    "int8_all": [],
    "keep_ffn_out": ["encoder.layer.?.output.dense"],
    "keep_ffn_in": ["encoder.layer.?.intermediate.dense"],
    "keep_attention": ["encoder.layer.?.attention.*"],
    "keep_first_layer": ["encoder.layer.0.*"],
    "keep_last_layer": ["encoder.layer.5.*"],
}


def main(bundle_path: Path, seed: Path) -> dict[str, dict[str, object]]:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    data = {}
    for dataset, (task, mapping) in ACCURACY_SETS.items():
        with (seed / dataset / "dev.csv").open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        channel = "news" if task.startswith("news") else "customer_service"
        kind = "sentiment" if task.endswith("sentiment") else "topic"
        data[dataset] = (channel, kind, [r["text"] for r in rows], [mapping.get(r["label"], r["label"]) for r in rows])
    speed_texts = data["fin_tweets_topic"][2][:1500]
    results: dict[str, dict[str, object]] = {}
    reference: dict[str, tuple[float, list[str]]] = {}
    for name, keep in CONFIGS.items():
        engine = Engine(
            load_bundle(bundle_path, verify=False),
            Placement(torch.device("cpu"), "fp32" if keep is None else "int8"),
            int8_fp32_modules=keep or (),
        )
        engine.score(speed_texts[:64], ["news"] * 64)
        started = time.perf_counter()
        engine.score(speed_texts, ["news"] * len(speed_texts))
        seconds = time.perf_counter() - started
        delta: dict[str, float] = {}
        flips: dict[str, float] = {}
        for dataset, (channel, kind, texts, gold) in data.items():
            labels = [getattr(s, kind).label for s in engine.score(texts, [channel] * len(texts))]
            acc = sum(p == g for p, g in zip(labels, gold, strict=True)) / len(gold)
            reference.setdefault(dataset, (acc, labels))
            ref_acc, ref_labels = reference[dataset]
            delta[dataset] = round(100 * (acc - ref_acc), 2)
            flips[dataset] = round(100 * sum(a != b for a, b in zip(labels, ref_labels, strict=True)) / len(gold), 2)
        results[name] = {
            "int8_fp32_modules": keep,
            "docs_per_s_indicative": round(len(speed_texts) / seconds, 1),
            "dev_accuracy_delta_points": delta,
            "dev_predictions_changed_pct": flips,
        }
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    return results


if __name__ == "__main__":
    out = main(Path(sys.argv[1]), Path(os.environ.get("RISKSTREAM_SEED_DATA", "../shared/data")))
    print(json.dumps(out, indent=2))

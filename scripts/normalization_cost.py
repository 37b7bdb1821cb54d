"""What the bundle's text normalization saves in serving: the same engine and weights, texts as received vs "reader".

Usage: HF_HUB_OFFLINE=1 RISKSTREAM_SEED_DATA=../shared/data .venv/bin/python scripts/normalization_cost.py BUNDLE_DIR \
           [--n 2000] [--repeats 3]

Scores the first N texts of every seed test set with two engines over one loaded bundle, one reading the texts as
received ("none") and one with the "reader" normalization (links reduced to their host, HTML entities decoded),
timed alternately in one process, best of ``--repeats``. Prints JSON: tokens per document and documents/s for each,
and their ratio. This is a cost measurement: which of the two a bundle gets in service is fixed by its manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from inference.bench import read_split
from inference.device import Placement
from inference.engine import Engine
from riskstream.modeling import LoadedBundle, load_bundle

SETS = {
    "fin_tweets_topic": "news",
    "fin_tweets_sentiment": "news",
    "financial_phrasebank": "news",
    "banking77": "customer_service",
    "cs_sentiment": "customer_service",
}


def with_normalization(bundle: LoadedBundle, scheme: str) -> LoadedBundle:
    manifest = dataclasses.replace(bundle.manifest, text_normalization=scheme)
    return dataclasses.replace(bundle, manifest=manifest)


def main(bundle_path: Path, seed: Path, n: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    bundle = load_bundle(bundle_path)
    cpu = Placement(torch.device("cpu"), "fp32")
    engines = {s: Engine(with_normalization(bundle, s), cpu) for s in ("none", "reader")}
    out: dict[str, Any] = {"bundle": bundle.version, "documents_per_set": n, "repeats": repeats, "sets": {}}
    for dataset, channel in SETS.items():
        texts = [r["text"] for r in read_split(seed, dataset, "test", n)]
        channels = [channel] * len(texts)
        best: dict[str, float] = {}
        tokens: dict[str, int] = {}
        for engine in engines.values():
            engine.score(texts[:64], channels[:64])  # warm-up
        for _ in range(repeats):
            for s, engine in engines.items():
                started = time.perf_counter()
                engine.score(texts, channels)
                best[s] = min(best.get(s, float("inf")), time.perf_counter() - started)
                tokens[s] = engine.last_stats.tokens
        out["sets"][dataset] = {
            "documents": len(texts),
            **{f"tokens_per_doc_{s}": round(tokens[s] / len(texts), 1) for s in engines},
            **{f"docs_per_s_{s}": round(len(texts) / best[s], 1) for s in engines},
            "speedup_reader": round(best["none"] / best["reader"], 2),
        }
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seed = Path(os.environ["RISKSTREAM_SEED_DATA"])
    print(json.dumps(main(args.bundle, seed, args.n, args.repeats), indent=2))

"""Test helpers shipped with the code: a tiny real model bundle in seconds, for this package's tests and others'.

``tiny_bundle(path, seed_data=...)`` fine-tunes the base encoder for a few steps on a handful of seed rows and
writes a genuine bundle (same format, same loader, real checksums). Its predictions are barely better than
chance; it exists to exercise loading, hot swaps, scoring paths and the registry, not to be accurate.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from finetune.data import load_training_data
from finetune.settings import FinetuneSettings
from finetune.train import train
from riskstream.modeling import BundleManifest, save_bundle


def tiny_settings(seed_data: Path, data_dir: Path, **overrides: object) -> FinetuneSettings:
    """Settings for a few-step training on a few rows (explicit, so the environment cannot change them)."""
    values: dict[str, object] = {
        "seed_data": seed_data,
        "data_dir": data_dir,
        "max_train_per_task": 24,
        "max_dev_per_dataset": 24,
        "epochs": 1.0,
        "max_train_minutes": None,
        "batch_size": 8,
        # pinned: what a few-step model learns must not move when the product's tuned defaults do
        "lr": 1e-4,
        "head_lr": 2e-3,
        "layer_lr_decay": 1.0,
        "task_sampling_temperature": 2.0,
        "task_weight_multipliers": {"cs_sentiment": 0.5},
        "text_normalization": "reader",
        "max_length": 32,
        "eval_batch_size": 64,
        "gate_min_macro_f1": 0.0,
        "threads": 1,
        "include_db_labels": True,
        # fp32 whatever the CPU: a test's few steps must not depend on the machine (bf16 is asked for by name)
        "cpu_bf16": False,
        # no kNN vote unless a test asks for one: its tests say what they expect of it
        "knn_weight": 0.0,
    }
    values.update(overrides)
    return FinetuneSettings.model_validate(values)


def tiny_bundle(
    path: Path,
    *,
    seed_data: Path,
    steps: int = 4,
    seed: int = 0,
    version: str = "m-test-tiny",
    temperature: float = 1.0,
) -> tuple[Path, str]:
    """Train ``steps`` steps on a few seed rows and save a bundle at ``path``; returns (path, sha256 digest).

    ``seed_data`` is a folder of ``<dataset>/{train,dev}.csv`` (the project's seed data). Takes ~10-30 s on CPU.
    """
    settings = tiny_settings(seed_data, path.parent, seed=seed)
    data = load_training_data(seed_data, max_train_per_task=24, max_dev_per_dataset=8, seed=seed)
    result = train(settings, data, max_steps=steps, progress=False)
    specs = {task: replace(spec, temperature=temperature) for task, spec in data.specs.items()}
    manifest = BundleManifest(
        version=version,
        base_model=str(settings.resolved_base_model()),
        tasks=specs,
        max_length=settings.max_length,
        text_normalization=settings.text_normalization,
        extra={"data_fingerprint": data.fingerprint, "tiny": True},
    )
    digest = save_bundle(result.model, result.tokenizer, manifest, path)
    return path, digest

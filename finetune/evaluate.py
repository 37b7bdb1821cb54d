"""Metrics of one head on one labeled set: accuracy, macro-F1, per-class precision/recall, confusion, ECE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from finetune.calibrate import ece, nll, reliability
from finetune.data import Example
from finetune.train import predict_outputs
from riskstream.modeling import MultiTaskModel


def metrics_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_names: Sequence[str],
    temperature: float | torch.Tensor,
    *,
    detail: bool = True,
) -> dict[str, Any]:
    """Metrics for calibrated probabilities ``softmax(logits / temperature)``; ECE also before calibration.

    ``temperature`` is one number, or one per row (shape ``[rows, 1]``, a calibration per source); then the
    metrics' ``temperature`` is their mean."""
    n = int(labels.shape[0])
    if n == 0:
        return {"n": 0, "accuracy": 0.0, "macro_f1": 0.0}
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    raw = torch.softmax(logits.float(), dim=-1)
    pred = probs.argmax(dim=1).numpy()
    gold = labels.numpy()
    label_ids = list(range(len(label_names)))
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float((pred == gold).mean()),
        "macro_f1": float(f1_score(gold, pred, labels=label_ids, average="macro", zero_division=0)),
        "ece": ece(probs, labels),
        "ece_uncalibrated": ece(raw, labels),
        "nll": nll(logits, labels, temperature),
        "temperature": float(temperature.mean()) if isinstance(temperature, torch.Tensor) else temperature,
    }
    if detail:
        # macro-F1 over the labels present in gold or predictions would be kinder to small slices; keep all labels
        p, r, f, s = precision_recall_fscore_support(gold, pred, labels=label_ids, zero_division=0)
        out["per_class"] = {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(label_names)
        }
        out["confusion"] = confusion_matrix(gold, pred, labels=label_ids).tolist()
        out["reliability"] = reliability(probs, labels)
    return out


class Scored(NamedTuple):
    logits: torch.Tensor  # [rows, labels], raw
    labels: torch.Tensor  # [rows], gold label indices
    pooled: torch.Tensor  # [rows, hidden], the embeddings the heads read


def score_examples(
    model: MultiTaskModel,
    tokenizer: Any,
    rows: Sequence[Example],
    task: str,
    *,
    max_length: int,
    normalization: str,
    batch_size: int = 128,
    progress: bool = False,
    desc: str = "score",
) -> Scored:
    logits, pooled = predict_outputs(
        model,
        tokenizer,
        [ex.text for ex in rows],
        task,
        max_length=max_length,
        normalization=normalization,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    labels = torch.tensor(np.array([ex.label for ex in rows], dtype=np.int64))
    return Scored(logits, labels, pooled)


def summarize(per_dataset: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Mean macro-F1 / accuracy / ECE across datasets (the gate's 'overall')."""
    values = [m for m in per_dataset.values() if m.get("n")]
    if not values:
        return {"mean_macro_f1": 0.0, "mean_accuracy": 0.0, "max_ece": 0.0}
    return {
        "mean_macro_f1": float(np.mean([m["macro_f1"] for m in values])),
        "mean_accuracy": float(np.mean([m["accuracy"] for m in values])),
        "max_ece": float(max(m.get("ece", 0.0) for m in values)),
    }

"""Metrics of one head on one labeled set: accuracy, macro-F1, per-class precision/recall, confusion, ECE.

Plus how far to trust them: bootstrap 95% intervals of accuracy and macro-F1 (a test set of 483 rows moves a few
points between resamples), and a paired bootstrap of the difference between two models scored on the same rows,
which is what tells a real gain from a lucky seed.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from finetune.calibrate import Vote, ece, nll, reliability
from finetune.data import Example
from finetune.train import predict_outputs
from riskstream.modeling import MultiTaskModel, TaskSpec, calibrated_probs, mix_vote


def metrics_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_names: Sequence[str],
    temperature: float | torch.Tensor,
    *,
    detail: bool = True,
    vote: Vote | None = None,
) -> dict[str, Any]:
    """Metrics for calibrated probabilities ``softmax(logits / temperature)``; ECE also before calibration.

    ``temperature`` is one number, or one per row (shape ``[rows, 1]``, a calibration per source); then the
    metrics' ``temperature`` is their mean. ``vote`` (weight, the rows' kNN label shares; :func:`head_vote`) is
    mixed into both, as the model serves it."""
    n = int(labels.shape[0])
    if n == 0:
        return {"n": 0, "accuracy": 0.0, "macro_f1": 0.0}
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    raw = torch.softmax(logits.float(), dim=-1)
    if vote is not None:
        probs, raw = mix_vote(probs, *vote), mix_vote(raw, *vote)
    pred = probs.argmax(dim=1).numpy()
    gold = labels.numpy()
    label_ids = list(range(len(label_names)))
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float((pred == gold).mean()),
        "macro_f1": float(f1_score(gold, pred, labels=label_ids, average="macro", zero_division=0)),
        "ece": ece(probs, labels),
        "ece_uncalibrated": ece(raw, labels),
        "nll": nll(logits, labels, temperature, vote=vote),
        "temperature": float(temperature.mean()) if isinstance(temperature, torch.Tensor) else temperature,
    }
    if vote is not None:
        out["knn_weight"] = vote[0]
    if detail:
        # macro-F1 over the labels present in gold or predictions would be kinder to small slices; keep all labels
        p, r, f, s = precision_recall_fscore_support(gold, pred, labels=label_ids, zero_division=0)
        out["per_class"] = {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(label_names)
        }
        out["confusion"] = confusion_matrix(gold, pred, labels=label_ids).tolist()
        ci = bootstrap_ci(gold, pred, len(label_names))
        out["accuracy_ci95"] = ci["accuracy"]
        out["macro_f1_ci95"] = ci["macro_f1"]
        out["reliability"] = reliability(probs, labels)
    return out


def head_vote(spec: TaskSpec, model: MultiTaskModel, pooled: torch.Tensor) -> Vote | None:
    """(weight, the rows' kNN label shares) for a head with a kNN vote, else None (for :func:`metrics_from_logits`)."""
    if spec.knn_weight <= 0:
        return None
    memory = model.memory(spec.name)
    if memory is None:
        raise ValueError(f"task {spec.name} mixes in a kNN vote, but the model has no memory for it")
    return spec.knn_weight, memory.vote(pooled, len(spec.labels), spec.knn_k, spec.knn_temperature)


def predicted_labels(spec: TaskSpec, model: MultiTaskModel, logits: torch.Tensor, pooled: torch.Tensor) -> np.ndarray:
    """The label ids the model serves for these rows: the head's argmax, or with a kNN vote the mixture's."""
    if spec.knn_weight <= 0:
        return logits.argmax(dim=1).numpy()  # a temperature moves no argmax
    probs = calibrated_probs(spec, logits, pooled, model.source_classifier(spec.name), model.memory(spec.name))
    return probs.argmax(dim=1).cpu().numpy()


BOOTSTRAP_RESAMPLES = 1000


def _resample_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[resamples, n]``: how many times each row is drawn in each resample (rows drawn with replacement)."""
    idx = rng.integers(0, n, size=(resamples, n))
    flat = (np.arange(resamples)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def _resampled_scores(
    weights: np.ndarray, gold: np.ndarray, pred: np.ndarray, n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 of every resample (``weights`` from :func:`_resample_weights`), as sklearn computes
    them with ``labels=range(n_labels), zero_division=0``: every label counts in the mean, 0 where it has neither
    gold rows nor predictions."""
    eye = np.eye(n_labels)
    gold_1h, pred_1h = eye[gold], eye[pred]
    n = weights.sum(axis=1)
    accuracy = weights @ (gold == pred).astype(np.float64) / n
    tp = weights @ (gold_1h * pred_1h)
    denom = weights @ gold_1h + weights @ pred_1h  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return accuracy, f1.mean(axis=1)


def _interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_ci(
    gold: np.ndarray, pred: np.ndarray, n_labels: int, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile bootstrap 95% intervals of accuracy and macro-F1 (rows resampled with replacement; a fixed
    seed, so the same predictions always give the same interval)."""
    gold, pred = np.asarray(gold), np.asarray(pred)
    if len(gold) == 0:
        return {"accuracy": [0.0, 0.0], "macro_f1": [0.0, 0.0]}
    weights = _resample_weights(len(gold), resamples, np.random.default_rng(seed))
    accuracy, macro_f1 = _resampled_scores(weights, gold, pred, n_labels)
    return {"accuracy": _interval(accuracy), "macro_f1": _interval(macro_f1)}


class PairedComparison(NamedTuple):
    """Candidate minus baseline on the same rows: point differences, their 95% intervals, and the resampled
    differences themselves (to combine datasets: :func:`mean_difference`)."""

    n: int
    accuracy: tuple[float, float]  # baseline, candidate
    macro_f1: tuple[float, float]
    accuracy_delta_ci95: list[float]
    macro_f1_delta_ci95: list[float]
    macro_f1_deltas: np.ndarray  # [resamples]

    def to_json(self) -> dict[str, Any]:
        (acc_a, acc_b), (f1_a, f1_b) = self.accuracy, self.macro_f1
        return {
            "n": self.n,
            "accuracy": {"baseline": acc_a, "candidate": acc_b, "delta": acc_b - acc_a,
                         "delta_ci95": self.accuracy_delta_ci95},
            "macro_f1": {"baseline": f1_a, "candidate": f1_b, "delta": f1_b - f1_a,
                         "delta_ci95": self.macro_f1_delta_ci95,
                         "candidate_better_share": float((self.macro_f1_deltas > 0).mean())},
        }  # fmt: skip


def paired_bootstrap(
    gold: np.ndarray,
    pred_baseline: np.ndarray,
    pred_candidate: np.ndarray,
    n_labels: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Both models' predictions on the same rows, resampled together: the interval of the difference is much
    narrower than the two models' own intervals suggest, because the rows both get right or both get wrong move
    together."""
    gold, pa, pb = np.asarray(gold), np.asarray(pred_baseline), np.asarray(pred_candidate)
    if not len(gold) == len(pa) == len(pb) or len(gold) == 0:
        raise ValueError(f"paired predictions need the same non-empty rows ({len(gold)}, {len(pa)}, {len(pb)})")
    weights = _resample_weights(len(gold), resamples, np.random.default_rng(seed))
    acc_a, f1_a = _resampled_scores(weights, gold, pa, n_labels)
    acc_b, f1_b = _resampled_scores(weights, gold, pb, n_labels)
    full = np.ones((1, len(gold)))
    (point_acc_a,), (point_f1_a,) = _resampled_scores(full, gold, pa, n_labels)
    (point_acc_b,), (point_f1_b,) = _resampled_scores(full, gold, pb, n_labels)
    return PairedComparison(
        n=len(gold),
        accuracy=(float(point_acc_a), float(point_acc_b)),
        macro_f1=(float(point_f1_a), float(point_f1_b)),
        accuracy_delta_ci95=_interval(acc_b - acc_a),
        macro_f1_delta_ci95=_interval(f1_b - f1_a),
        macro_f1_deltas=f1_b - f1_a,
    )


def mean_difference(comparisons: Sequence[PairedComparison]) -> dict[str, Any]:
    """The gate's 'overall' (the mean macro-F1 over datasets), candidate minus baseline, with a 95% interval:
    each dataset is resampled on its own and the resampled differences are averaged resample by resample."""
    if not comparisons:
        raise ValueError("no datasets to compare")
    deltas = np.mean([c.macro_f1_deltas for c in comparisons], axis=0)
    point = float(np.mean([c.macro_f1[1] - c.macro_f1[0] for c in comparisons]))
    return {
        "mean_macro_f1_delta": point,
        "mean_macro_f1_delta_ci95": _interval(deltas),
        "candidate_better_share": float((deltas > 0).mean()),
    }


Predictions = dict[str, tuple[np.ndarray, np.ndarray]]  # dataset -> (gold label ids, predicted label ids)


def paired_summary(baseline: Predictions, candidate: Predictions, n_labels: dict[str, int]) -> dict[str, Any] | None:
    """Paired bootstrap of candidate against baseline on every dataset both scored on the same rows (same gold
    labels in the same order), and of the mean macro-F1 over those datasets; None when there is none. Each
    dataset's resamples have their own seed (from its name), so datasets of equal size do not move together."""
    comparisons: dict[str, PairedComparison] = {}
    for name in sorted(set(baseline) & set(candidate)):
        (gold, pred_base), (gold_cand, pred_cand) = baseline[name], candidate[name]
        if len(gold) == 0 or not np.array_equal(gold, gold_cand):
            continue
        comparisons[name] = paired_bootstrap(gold, pred_base, pred_cand, n_labels[name], seed=zlib.crc32(name.encode()))
    if not comparisons:
        return None
    return {
        "datasets": {name: c.to_json() for name, c in comparisons.items()},
        "overall": mean_difference(list(comparisons.values())),
    }


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

"""Temperature scaling (Guo et al., 2017): one scalar per head, fitted on dev by minimising the NLL.

``softmax(logits / T)`` keeps every argmax (accuracy is unchanged) and only reshapes the confidences, so the
scores alert thresholds and the labeling queue rely on mean what they say. Expected calibration error (ECE) uses
15 equal-width confidence bins.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch.nn import functional as F  # noqa: N812

ECE_BINS = 15


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.float() / temperature, labels.long()))


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the bin-weighted gap between confidence and accuracy of the top class."""
    if probs.numel() == 0:
        return 0.0
    conf, pred = probs.float().max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0.0, 1.0, bins + 1)
    total = torch.zeros(())
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return float(total)


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per-bin (lower, upper, count, mean confidence, accuracy) for the reliability diagram."""
    conf, pred = probs.float().max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0.0, 1.0, bins + 1)
    out: list[dict[str, float]] = []
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        n = int(in_bin.sum())
        out.append(
            {
                "lower": float(lo),
                "upper": float(hi),
                "count": float(n),
                "confidence": float(conf[in_bin].mean()) if n else 0.0,
                "accuracy": float(correct[in_bin].mean()) if n else 0.0,
            }
        )
    return out


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 100) -> float:
    """The temperature minimising dev NLL (LBFGS on log T, so T stays positive); 1.0 when there is no data.

    The result is clamped to [0.05, 20] and falls back to a coarse grid search if LBFGS does not improve on it.
    """
    if logits.shape[0] == 0:
        return 1.0
    # clones: scores from torch.inference_mode() cannot take part in autograd, and LBFGS needs it
    logits = logits.detach().float().clone()
    labels = labels.detach().long().clone()
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    candidate = float(log_t.detach().exp().clamp(0.05, 20.0))
    grid = [math.exp(x / 20) for x in range(-60, 61)]  # 0.05 .. 20
    best = min([candidate, *grid], key=lambda t: nll(logits, labels, t))
    if not math.isfinite(best):
        return 1.0
    return best

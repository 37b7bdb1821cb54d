"""Temperature scaling (Guo et al., 2017): one scalar per head (or per source dataset of a head trained on
several), fitted on dev by minimising the NLL.

``softmax(logits / T)`` keeps every argmax (accuracy is unchanged) and only reshapes the confidences, so the
scores alert thresholds and the labeling queue rely on mean what they say. Expected calibration error (ECE) uses
15 equal-width confidence bins.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from riskstream.modeling import mix_vote

ECE_BINS = 15


Vote = tuple[float, torch.Tensor]  # (weight, the rows' kNN label shares) of a head with a kNN vote


def _nll(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float | torch.Tensor, vote: Vote | None
) -> torch.Tensor:
    """Mean NLL of ``softmax(logits / temperature)``, with the head's kNN vote mixed in when it has one (what the
    model serves, so what its temperature is fitted for). Differentiable in ``temperature``."""
    if vote is None:
        return F.cross_entropy(logits / temperature, labels)
    probs = mix_vote(torch.softmax(logits / temperature, dim=-1), *vote)
    return -torch.log(probs.gather(1, labels.unsqueeze(1)).clamp(min=1e-12)).mean()


def nll(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float | torch.Tensor = 1.0, *, vote: Vote | None = None
) -> float:
    """Mean negative log-likelihood of the calibrated probabilities (the vote mixed in when given)."""
    return float(_nll(logits.float(), labels.long(), temperature, vote))


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


def _detached_vote(vote: Vote | None) -> Vote | None:
    return None if vote is None else (float(vote[0]), vote[1].detach().float().clone())


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, *, vote: Vote | None = None, max_iter: int = 100
) -> float:
    """The temperature minimising dev NLL (LBFGS on log T, so T stays positive); 1.0 when there is no data.

    With ``vote`` (a head with a kNN vote: its weight and the rows' label shares) the NLL is that of the mixture
    the model serves, ``(1 - w) * softmax(logits / T) + w * vote``, so the temperature is fitted for what is served
    rather than for the head alone. Then T also moves the argmax (the mixture's), slightly.

    The result is clamped to [0.05, 20] and falls back to a coarse grid search if LBFGS does not improve on it.
    """
    if logits.shape[0] == 0:
        return 1.0
    # clones: scores from torch.inference_mode() cannot take part in autograd, and LBFGS needs it
    logits = logits.detach().float().clone()
    labels = labels.detach().long().clone()
    vote = _detached_vote(vote)
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _nll(logits, labels, log_t.exp(), vote)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    candidate = float(log_t.detach().exp().clamp(0.05, 20.0))
    grid = [math.exp(x / 20) for x in range(-60, 61)]  # 0.05 .. 20
    best = min([candidate, *grid], key=lambda t: nll(logits, labels, t, vote=vote))
    if not math.isfinite(best):
        return 1.0
    return best


# --- a temperature per source dataset, for a head trained on several ------------------------------------------
#
# One temperature cannot serve a head whose datasets it over-fits to different degrees: after three epochs the
# news-sentiment head is far more over-confident on phrasebank's sentences than on the tweets (alone they want 3.0
# and 2.0). A linear classifier on the pooled embedding tells the sources apart, and each row's temperature is the
# geometric mean of the sources' temperatures weighted by that classifier's probabilities, so text that reads like
# a news sentence is calibrated like one, whatever its source, and text between the kinds gets a temperature between
# theirs.


def fit_source_classifier(
    pooled_by_source: Mapping[str, torch.Tensor], *, l2: float = 1e-3, max_iter: int = 200
) -> nn.Linear:
    """Multinomial logistic regression from pooled embeddings to their source (the mapping's order is the output
    order). The features are standardised for the fit and the scaling folded into the returned layer, which reads
    raw embeddings. Give it a similar number of rows per source: its prior follows the row counts."""
    names = list(pooled_by_source)
    if len(names) < 2 or any(t.shape[0] == 0 for t in pooled_by_source.values()):
        raise ValueError(
            f"a source classifier needs rows of two or more sources (got {[len(t) for t in pooled_by_source.values()]})"
        )
    x = torch.cat([pooled_by_source[n].detach().float() for n in names])
    y = torch.cat([torch.full((pooled_by_source[n].shape[0],), i, dtype=torch.long) for i, n in enumerate(names)])
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    weight = torch.zeros(len(names), x.shape[1], requires_grad=True)
    bias = torch.zeros(len(names), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    layer = nn.Linear(x.shape[1], len(names))
    with torch.no_grad():
        folded = weight.detach() / std
        layer.weight.copy_(folded)
        layer.bias.copy_(bias.detach() - folded @ mean)
    return layer.eval()


def fit_source_temperatures(
    classifier: nn.Module,
    dev: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    votes: tuple[float, Mapping[str, torch.Tensor]] | None = None,
    max_iter: int = 100,
) -> tuple[float, ...]:
    """The sources' temperatures (in ``dev``'s order, which must be the classifier's) minimising the dev NLL of all
    rows together, each row divided by its mixed temperature. ``dev`` maps a source to its (logits, labels, pooled);
    ``votes`` (a head with a kNN vote: its weight, and each source's rows' label shares) makes it the NLL of the
    served mixture, as in :func:`fit_temperature`. Started from each source's own temperature, so the result is at
    least as good on the pooled NLL."""
    names = list(dev)
    logits = torch.cat([dev[n][0] for n in names]).detach().float().clone()
    labels = torch.cat([dev[n][1] for n in names]).detach().long().clone()
    vote = None if votes is None else _detached_vote((votes[0], torch.cat([votes[1][n] for n in names])))
    with torch.no_grad():
        weights = torch.softmax(classifier(torch.cat([dev[n][2] for n in names]).float()).float(), dim=-1)
    start = [
        math.log(fit_temperature(dev[n][0], dev[n][1], vote=None if votes is None else (votes[0], votes[1][n])))
        for n in names
    ]
    log_t = torch.tensor(start, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _nll(logits, labels, (weights @ log_t).exp().unsqueeze(1), vote)
        loss.backward()
        return loss

    def pooled_nll(values: Sequence[float]) -> float:
        return nll(logits, labels, (weights @ torch.tensor(values)).exp().unsqueeze(1), vote=vote)

    with torch.enable_grad():
        optimizer.step(closure)
    fitted = [float(v) for v in log_t.detach().clamp(math.log(0.05), math.log(20.0))]
    best = fitted if all(map(math.isfinite, fitted)) and pooled_nll(fitted) <= pooled_nll(start) else start
    return tuple(math.exp(v) for v in best)

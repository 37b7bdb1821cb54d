"""Label smoothing per row for the labels annotators disputed (``--ambiguous-label-smoothing``): the loss, and a
training that pushes the disputed rows' labels less hard than the agreed ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from finetune.data import load_training_data
from finetune.testing import tiny_settings
from finetune.train import predict_outputs, smoothed_cross_entropy, train


def test_per_row_smoothing_is_torchs_label_smoothing_row_by_row() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    for eps in (0.0, 0.3):
        expected = nn.CrossEntropyLoss(label_smoothing=eps)(logits, target)
        assert torch.allclose(smoothed_cross_entropy(logits, target, torch.full((6,), eps)), expected)
    eps = torch.tensor([0.0, 0.3, 0.0, 0.3, 0.0, 0.3])
    rows = [
        nn.CrossEntropyLoss(label_smoothing=float(e))(logits[i : i + 1], target[i : i + 1]) for i, e in enumerate(eps)
    ]
    assert torch.allclose(smoothed_cross_entropy(logits, target, eps), torch.stack(rows).mean())


def test_its_optimum_is_the_smoothed_target_not_certainty() -> None:
    logits = torch.zeros(2, 3, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = smoothed_cross_entropy(logits, torch.tensor([0, 0]), torch.tensor([0.0, 0.3]))
        loss.backward()
        return loss

    optimizer.step(closure)
    probs = torch.softmax(logits.detach(), -1)
    assert probs[0, 0] > 0.99  # agreed: pushed towards certainty
    assert torch.allclose(probs[1], torch.tensor([0.8, 0.1, 0.1]), atol=1e-3)  # disputed: 0.7 + 0.3 / 3


@pytest.mark.slow
def test_training_pushes_disputed_labels_less_hard(seed_slice: Path, tmp_path: Path) -> None:
    data = load_training_data(seed_slice, datasets=["financial_phrasebank"])
    rows = data.train["news_sentiment"]
    disputed = [ex for ex in rows if ex.ambiguous]
    assert disputed and len(disputed) < len(rows)  # the slice has rows of both kinds
    own: dict[float, float] = {}
    for eps in (0.0, 0.6):
        settings = tiny_settings(seed_slice, tmp_path, ambiguous_label_smoothing=eps, head_lr=2e-2)
        result = train(settings, data, max_steps=12, progress=False)
        logits, _ = predict_outputs(
            result.model, result.tokenizer, [ex.text for ex in disputed], "news_sentiment",
            max_length=settings.max_length, normalization=settings.text_normalization,
        )  # fmt: skip
        probs = torch.softmax(logits, -1)
        own[eps] = float(probs[torch.arange(len(disputed)), torch.tensor([ex.label for ex in disputed])].mean())
    # the same batches in the same order: only the disputed rows' targets differ
    assert own[0.6] < own[0.0] - 0.02, own

"""The optimizer's parameter groups: the heads' rate, the encoder's rate per layer, no decay on norms and biases."""

from __future__ import annotations

import pytest

from finetune.train import _param_groups
from riskstream.modeling import SENTIMENT_LABELS, TASKS, TaskSpec, build_untrained, default_base_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_layer_lr_decay_scales_each_encoder_layer_by_its_depth_below_the_top(decay: float) -> None:
    tasks = {
        name: TaskSpec(name, channel, kind, SENTIMENT_LABELS if kind == "sentiment" else ("a", "b"))
        for name, (channel, kind) in TASKS.items()
    }
    model, _ = build_untrained(default_base_model(), tasks)
    groups = _param_groups(model, lr=1e-4, head_lr=1e-3, weight_decay=0.01, layer_lr_decay=decay)
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    seen = set()
    for name, p in model.named_parameters():
        if name.startswith("heads."):
            expected = 1e-3
        elif "embeddings" in name:
            expected = 1e-4 * decay**6  # the base encoder has 6 layers: the embeddings sit below all of them
        elif ".layer." in name:
            layer = int(name.split(".layer.")[1].split(".")[0])
            expected = 1e-4 * decay ** (5 - layer)
            seen.add(layer)
        else:
            expected = 1e-4  # the pooler, above the layers
        assert lr[id(p)] == pytest.approx(expected), name
        assert wd[id(p)] == (0.0 if p.ndim < 2 or "LayerNorm" in name else 0.01), name
    assert seen == set(range(6))
    # decay 1: heads and encoder, each with and without weight decay; else the encoder per level (the embeddings
    # and 6 layers, the pooler sharing the top one's rate)
    assert len(groups) == (4 if decay == 1.0 else 2 + 2 * 7)

"""Training precision on CPU: bf16 autocast where the CPU has native bf16 (or on request), else fp32; both train
here, with fp32 weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from finetune.data import load_training_data
from finetune.settings import FinetuneSettings
from finetune.testing import tiny_settings
from finetune.train import autocast_for, seed_everything, train
from riskstream.modeling import build_untrained


def test_cpu_training_is_bf16_where_the_cpu_has_it_natively_unless_told_otherwise() -> None:
    cpu = torch.device("cpu")
    assert autocast_for(cpu, None, native_bf16=True)[1] == torch.bfloat16
    assert autocast_for(cpu, None, native_bf16=False)[1] is None  # emulated bf16 is slower than fp32
    assert autocast_for(cpu, False, native_bf16=True)[1] is None
    assert autocast_for(cpu, True, native_bf16=False)[1] == torch.bfloat16
    assert autocast_for(cpu, True)[2] is False  # bf16 needs no gradient scaler
    # the default setting asks the CPU
    assert FinetuneSettings.model_fields["cpu_bf16"].default is None


@pytest.mark.parametrize(("cpu_bf16", "precision"), [(False, "fp32"), (True, "bfloat16")])
def test_training_learns_in_both_cpu_precisions_and_keeps_fp32_weights(
    seed_slice: Path, tmp_path: Path, cpu_bf16: bool, precision: str
) -> None:
    settings = tiny_settings(seed_slice, tmp_path, cpu_bf16=cpu_bf16, seed=3)
    data = load_training_data(seed_slice, max_train_per_task=24, max_dev_per_dataset=8, seed=3)
    seed_everything(settings.seed)  # the same initialisation as train's
    untrained, _ = build_untrained(settings.resolved_base_model(), data.specs, dropout=settings.dropout)
    before = untrained.state_dict()
    result = train(settings, data, max_steps=6, progress=False)
    assert result.precision == precision and result.steps == 6
    losses = [v for row in result.history for k, v in row.items() if k.startswith("loss/")]
    assert losses and all(math.isfinite(v) for v in losses)
    after = result.model.state_dict()
    # autocast computes in bf16 but the weights the bundle saves stay fp32, and they moved
    assert all(t.dtype == torch.float32 for t in after.values() if t.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_the_saved_weights_are_the_moving_average_when_asked_for(seed_slice: Path, tmp_path: Path) -> None:
    """``ema_decay``: the model handed to calibration and saving is the average of the steps' weights, training
    itself is unchanged; a decay near 0 gives back the last step's weights, and no step in the window averages
    nothing."""
    data = load_training_data(seed_slice, max_train_per_task=24, max_dev_per_dataset=8, seed=3)

    def run(**kw: float) -> tuple[dict[str, torch.Tensor], int]:
        settings = tiny_settings(seed_slice, tmp_path, seed=3, **kw)
        seed_everything(settings.seed)
        result = train(settings, data, max_steps=6, progress=False)
        return {k: v.detach().clone() for k, v in result.model.state_dict().items()}, result.ema_steps

    plain, none = run()
    averaged, steps = run(ema_decay=0.5, ema_start=0.0)
    last, _ = run(ema_decay=1e-9, ema_start=0.0)
    late, late_steps = run(ema_decay=0.5, ema_start=0.99)  # step 6 of 6 starts at 5/6 < 0.99
    assert (none, steps, late_steps) == (0, 6, 0)
    moved = [k for k in plain if plain[k].is_floating_point() and not torch.equal(plain[k], averaged[k])]
    assert moved  # the average is not the last step's weights
    for k in plain:
        if plain[k].is_floating_point():
            assert torch.allclose(plain[k], last[k], atol=1e-5), k  # same trajectory, near-zero decay: last weights
            assert torch.allclose(plain[k], late[k], atol=1e-5), k

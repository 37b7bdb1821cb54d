"""How far to trust an evaluation: bootstrap intervals of accuracy and macro-F1, and the paired comparison of two
models on the same rows (pure numpy, no services)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from finetune.evaluate import _resampled_scores, bootstrap_ci, mean_difference, paired_bootstrap


def _predictions(n: int, n_labels: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, n_labels, n)
    wrong = rng.random(n) > accuracy
    pred = np.where(wrong, (gold + rng.integers(1, n_labels, n)) % n_labels, gold)
    return gold, pred


def test_resampled_scores_match_sklearn_on_the_full_set_including_a_label_nobody_has() -> None:
    gold, pred = _predictions(300, 4, 0.7, seed=1)
    # label 4 of 5: neither gold nor predicted, so it counts as 0 in the macro mean, as eval's sklearn call does
    (acc,), (f1,) = _resampled_scores(np.ones((1, len(gold))), gold, pred, 5)
    assert acc == pytest.approx((gold == pred).mean())
    assert f1 == pytest.approx(f1_score(gold, pred, labels=range(5), average="macro", zero_division=0))


def test_the_interval_holds_the_point_figure_and_narrows_with_more_rows() -> None:
    small = bootstrap_ci(*_predictions(480, 3, 0.85, seed=2), 3)
    large = bootstrap_ci(*_predictions(4800, 3, 0.85, seed=2), 3)
    gold, pred = _predictions(480, 3, 0.85, seed=2)
    lo, hi = small["accuracy"]
    assert lo < (gold == pred).mean() < hi
    # about +-3 points on phrasebank's 483 rows, a third of that on ten times the rows
    assert 0.04 < hi - lo < 0.08
    assert (large["accuracy"][1] - large["accuracy"][0]) < 0.45 * (hi - lo)
    assert large["macro_f1"][1] - large["macro_f1"][0] < small["macro_f1"][1] - small["macro_f1"][0]
    assert bootstrap_ci(gold, pred, 3) == small  # fixed seed: the same predictions give the same interval


def test_identical_models_differ_by_exactly_nothing() -> None:
    gold, pred = _predictions(500, 3, 0.8, seed=3)
    same = paired_bootstrap(gold, pred, pred.copy(), 3)
    assert same.accuracy_delta_ci95 == [0.0, 0.0] and same.macro_f1_delta_ci95 == [0.0, 0.0]
    assert same.to_json()["macro_f1"]["candidate_better_share"] == 0.0


def test_a_candidate_that_fixes_errors_and_breaks_none_is_shown_better_beyond_doubt() -> None:
    gold, base = _predictions(500, 3, 0.8, seed=4)
    errors = np.flatnonzero(base != gold)
    fixed = base.copy()
    fixed[errors[: len(errors) // 4]] = gold[errors[: len(errors) // 4]]  # +5 points of accuracy, nothing broken
    result = paired_bootstrap(gold, base, fixed, 3)
    assert result.accuracy[1] - result.accuracy[0] == pytest.approx(len(errors[: len(errors) // 4]) / 500)
    assert result.accuracy_delta_ci95[0] > 0 and result.macro_f1_delta_ci95[0] > 0
    # pairing is the point: each model's own interval is about 7 points wide and the two overlap,
    # while the paired interval of their difference lies above 0
    own_base, own_fixed = bootstrap_ci(gold, base, 3), bootstrap_ci(gold, fixed, 3)
    assert own_fixed["accuracy"][0] < own_base["accuracy"][1]


def test_a_candidate_that_trades_errors_cannot_be_told_apart() -> None:
    gold, base = _predictions(500, 3, 0.8, seed=5)
    errors, right = np.flatnonzero(base != gold), np.flatnonzero(base == gold)
    traded = base.copy()
    traded[errors[:20]] = gold[errors[:20]]
    traded[right[:20]] = (gold[right[:20]] + 1) % 3  # as many rows broken as fixed
    result = paired_bootstrap(gold, base, traded, 3)
    assert result.accuracy[0] == result.accuracy[1]
    lo, hi = result.accuracy_delta_ci95
    assert lo < 0 < hi
    assert 0.2 < result.to_json()["macro_f1"]["candidate_better_share"] < 0.8


def test_the_overall_difference_averages_the_datasets_resample_by_resample() -> None:
    gold_a, base_a = _predictions(400, 3, 0.8, seed=6)
    gold_b, base_b = _predictions(900, 20, 0.9, seed=7)
    better_a = np.where(np.arange(400) % 5 == 0, gold_a, base_a)
    a = paired_bootstrap(gold_a, base_a, better_a, 3, seed=1)
    b = paired_bootstrap(gold_b, base_b, base_b, 20, seed=2)  # unchanged
    overall = mean_difference([a, b])
    assert overall["mean_macro_f1_delta"] == pytest.approx((a.macro_f1[1] - a.macro_f1[0]) / 2)
    lo, hi = overall["mean_macro_f1_delta_ci95"]
    assert 0 < lo < overall["mean_macro_f1_delta"] < hi
    with pytest.raises(ValueError, match="same non-empty rows"):
        paired_bootstrap(gold_a, base_a, base_a[:-1], 3)

"""How training steps are shared between tasks (pure logic, no model)."""

from __future__ import annotations

import pytest

from finetune.train import lr_factor, task_weights, training_progress

SIZES = {"cs_sentiment": 11522, "cs_topic": 8992, "news_sentiment": 12456, "news_topic": 15290}


def test_temperature_one_is_proportional_and_higher_temperatures_even_out() -> None:
    proportional = task_weights(SIZES, 1.0)
    assert proportional["news_topic"] == pytest.approx(15290 / sum(SIZES.values()))
    flatter = task_weights(SIZES, 4.0)
    assert max(flatter.values()) - min(flatter.values()) < max(proportional.values()) - min(proportional.values())
    assert sum(flatter.values()) == pytest.approx(1.0)


def test_a_multiplier_moves_steps_from_one_task_to_the_others() -> None:
    base = task_weights(SIZES, 2.0)
    shifted = task_weights(SIZES, 2.0, {"cs_sentiment": 0.5})
    assert shifted["cs_sentiment"] < base["cs_sentiment"]
    assert all(shifted[t] > base[t] for t in SIZES if t != "cs_sentiment")
    assert sum(shifted.values()) == pytest.approx(1.0)
    assert "cs_sentiment" not in task_weights(SIZES, 2.0, {"cs_sentiment": 0.0})


def test_a_multiplier_for_an_unknown_task_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="news_sentimnet"):
        task_weights(SIZES, 2.0, {"news_sentimnet": 2.0})
    with pytest.raises(ValueError, match="nothing to train"):
        task_weights({"a": 10}, 2.0, {"a": 0.0})


def test_the_schedule_follows_the_time_budget_when_it_runs_out_first() -> None:
    # 100 of 4,525 steps done but 90% of a 25-minute budget gone: the decay is 90% through
    assert training_progress(100, 4525, elapsed=0.9 * 1500, budget=1500) == pytest.approx(0.9)
    assert training_progress(100, 4525, elapsed=10, budget=None) == pytest.approx(100 / 4525)
    assert lr_factor(0.03, 0.06) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.06) == 0.0

"""How training steps are shared between tasks and datasets (pure logic, no model)."""

from __future__ import annotations

import pytest

from finetune.data import Example
from finetune.settings import FinetuneSettings
from finetune.train import (
    SAMPLING_NAMES,
    lr_factor,
    sampling_streams,
    sampling_weights,
    training_progress,
)

# the seed data's train rows, one stream per dataset
SIZES = {
    ("cs_sentiment", "cs_sentiment"): 11522,
    ("cs_topic", "banking77"): 8992,
    ("news_sentiment", "financial_phrasebank"): 3870,
    ("news_sentiment", "fin_tweets_sentiment"): 8586,
    ("news_topic", "fin_tweets_topic"): 15290,
}


def test_temperature_one_is_proportional_and_higher_temperatures_even_out() -> None:
    proportional = sampling_weights(SIZES, 1.0)
    assert proportional[("news_topic", "fin_tweets_topic")] == pytest.approx(15290 / sum(SIZES.values()))
    flatter = sampling_weights(SIZES, 4.0)
    assert max(flatter.values()) - min(flatter.values()) < max(proportional.values()) - min(proportional.values())
    assert sum(flatter.values()) == pytest.approx(1.0)


def test_the_smaller_dataset_of_a_shared_head_gets_its_own_share() -> None:
    # sampled as one pool, phrasebank would get 3870 / 12456 = 31% of the head's batches; as its own stream at
    # temperature 2 it gets sqrt(3870) / (sqrt(3870) + sqrt(8586)) = 40%
    weights = sampling_weights(SIZES, 2.0)
    phrasebank = weights[("news_sentiment", "financial_phrasebank")]
    tweets = weights[("news_sentiment", "fin_tweets_sentiment")]
    assert phrasebank / (phrasebank + tweets) == pytest.approx(0.402, abs=0.001)
    assert sum(weights.values()) == pytest.approx(1.0)


def test_a_multiplier_moves_steps_from_one_task_or_dataset_to_the_others() -> None:
    base = sampling_weights(SIZES, 2.0)
    shifted = sampling_weights(SIZES, 2.0, {"cs_sentiment": 0.5})
    assert shifted[("cs_sentiment", "cs_sentiment")] < base[("cs_sentiment", "cs_sentiment")]
    assert all(shifted[k] > base[k] for k in SIZES if k[0] != "cs_sentiment")
    assert sum(shifted.values()) == pytest.approx(1.0)
    # cs_sentiment names both a task and its dataset: the factor applies once, not squared
    others = sum(v for k, v in base.items() if k[0] != "cs_sentiment")
    halved = 0.5 * base[("cs_sentiment", "cs_sentiment")]
    assert shifted[("cs_sentiment", "cs_sentiment")] == pytest.approx(halved / (halved + others))
    assert ("cs_sentiment", "cs_sentiment") not in sampling_weights(SIZES, 2.0, {"cs_sentiment": 0.0})
    # a dataset name reaches just that dataset's stream, and stacks with its task's multiplier
    no_tweets = sampling_weights(SIZES, 2.0, {"fin_tweets_sentiment": 0.0, "news_sentiment": 2.0})
    assert ("news_sentiment", "fin_tweets_sentiment") not in no_tweets
    assert no_tweets[("news_sentiment", "financial_phrasebank")] > 2 * base[("news_sentiment", "financial_phrasebank")]


def test_a_multiplier_for_an_unknown_task_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="news_sentimnet"):
        sampling_weights(SIZES, 2.0, {"news_sentimnet": 2.0}, absent=SAMPLING_NAMES)
    # the default halves cs_sentiment; a run without customer-service rows must still train
    news_only = {k: n for k, n in SIZES.items() if k[0].startswith("news")}
    weights = sampling_weights(news_only, 2.0, FinetuneSettings().task_weight_multipliers, absent=SAMPLING_NAMES)
    assert set(weights) == set(news_only)
    with pytest.raises(ValueError, match="nothing to train"):
        sampling_weights({("a", "a"): 10}, 2.0, {"a": 0.0})


def test_rows_are_split_into_streams_by_source_keeping_their_index_in_the_task() -> None:
    rows = {
        "news_sentiment": [
            Example("up", 2, "financial_phrasebank"),
            Example("down", 0, "fin_tweets_sentiment"),
            Example("flat", 1, "analyst"),
            Example("rise", 2, "financial_phrasebank"),
        ],
        "cs_topic": [Example("card lost", 3, "banking77")],
    }
    assert sampling_streams(rows) == {
        ("news_sentiment", "financial_phrasebank"): [0, 3],
        ("news_sentiment", "fin_tweets_sentiment"): [1],
        ("news_sentiment", "analyst"): [2],
        ("cs_topic", "banking77"): [0],
    }


def test_the_schedule_follows_the_time_budget_when_it_runs_out_first() -> None:
    # 100 of 4,525 steps done but 90% of a 25-minute budget gone: the decay is 90% through
    assert training_progress(100, 4525, elapsed=0.9 * 1500, budget=1500) == pytest.approx(0.9)
    assert training_progress(100, 4525, elapsed=10, budget=None) == pytest.approx(100 / 4525)
    assert lr_factor(0.03, 0.06) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.06) == 0.0

"""Calibration (temperature scaling, per head and per source; ECE) and the promotion gate: pure logic, no model."""

from __future__ import annotations

import random

import pytest
import torch

from finetune.calibrate import ece, fit_source_classifier, fit_source_temperatures, fit_temperature, nll
from finetune.evaluate import metrics_from_logits
from finetune.gate import decide
from finetune.pipeline import CALIBRATION_ECE_WARN, _check_shared_temperatures, balanced_sample
from riskstream.modeling import BundleManifest, TaskSpec, calibrated_probs, row_temperatures


def _overconfident(n: int = 4000, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose argmax is right ~70% of the time but whose softmax claims ~99% confidence."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    wrong = torch.rand(n, generator=g) < 0.3
    pred = torch.where(wrong, (labels + torch.randint(1, classes, (n,), generator=g)) % classes, labels)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), pred] += 8.0
    return logits, labels


def test_temperature_scaling_lowers_nll_and_ece_of_an_overconfident_model() -> None:
    logits, labels = _overconfident()
    temperature = fit_temperature(logits, labels)
    assert temperature > 1.5
    assert nll(logits, labels, temperature) < nll(logits, labels)
    before = ece(torch.softmax(logits, -1), labels)
    after = ece(torch.softmax(logits / temperature, -1), labels)
    assert before > 0.2
    assert after < before / 4
    # accuracy is untouched: temperature never changes the argmax
    assert torch.equal((logits / temperature).argmax(1), logits.argmax(1))


def test_ece_is_zero_for_a_calibrated_toy() -> None:
    probs = torch.tensor([[0.5, 0.5]] * 4)
    labels = torch.tensor([0, 1, 0, 1])  # argmax 0, right half the time at confidence 0.5
    assert ece(probs, labels) < 1e-6


def _m(**f1: float) -> dict[str, dict[str, float]]:
    return {name: {"macro_f1": value} for name, value in f1.items()}


def test_first_model_passes_on_sanity_only() -> None:
    assert decide(_m(a=0.5, b=0.6), None, tolerance=0.02, min_macro_f1=0.2).accepted
    low = decide(_m(a=0.5, b=0.1), None, tolerance=0.02, min_macro_f1=0.2)
    assert not low.accepted and "b: dev macro-F1 0.1000 is below the sanity floor" in low.reasons[0]


def test_better_overall_is_promoted() -> None:
    d = decide(_m(a=0.80, b=0.71), _m(a=0.78, b=0.70), tolerance=0.02)
    assert d.accepted and d.champion_score is not None and d.candidate_score > d.champion_score


def test_better_overall_but_one_task_falls_too_far_is_refused() -> None:
    d = decide(_m(a=0.95, b=0.66), _m(a=0.70, b=0.70), tolerance=0.02)
    assert not d.accepted
    assert any("b: dev macro-F1 falls by 0.0400" in r for r in d.reasons)


def test_not_better_is_refused_and_missing_dataset_is_refused() -> None:
    assert not decide(_m(a=0.70, b=0.70), _m(a=0.70, b=0.70), tolerance=0.02).accepted
    d = decide(_m(a=0.9), _m(a=0.7, b=0.7), tolerance=0.02)
    assert not d.accepted and any("not evaluated on b" in r for r in d.reasons)


def test_min_improvement() -> None:
    assert not decide(_m(a=0.705), _m(a=0.70), tolerance=0.02, min_improvement=0.01).accepted
    assert decide(_m(a=0.72), _m(a=0.70), tolerance=0.02, min_improvement=0.01).accepted


def test_a_head_shared_by_two_datasets_that_want_different_temperatures_is_flagged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # phrasebank's logits are over-confident, the tweets' are already calibrated: one temperature cannot serve both.
    # Made under inference mode, as the scorer's are.
    with torch.inference_mode():
        sentences, sentence_labels = _overconfident(n=2000, classes=3, seed=1)
        probs = torch.softmax(torch.randn(2000, 3, generator=torch.Generator().manual_seed(2)) * 2, -1)
        tweet_labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).squeeze(1)
    logits = {"financial_phrasebank": (sentences, sentence_labels), "fin_tweets_sentiment": (probs.log(), tweet_labels)}
    shared = fit_temperature(torch.cat([sentences, probs.log()]), torch.cat([sentence_labels, tweet_labels]))
    metrics = {
        name: metrics_from_logits(lg, lb, ("negative", "neutral", "positive"), shared, detail=False)
        for name, (lg, lb) in logits.items()
    }
    with caplog.at_level("WARNING", logger="finetune.pipeline"):
        _check_shared_temperatures(logits, metrics, {"news_sentiment": shared})
    # the shared temperature falls between what each set wants, and neither is calibrated by it
    assert metrics["financial_phrasebank"]["temperature_alone"] > shared + 1
    assert abs(metrics["fin_tweets_sentiment"]["temperature_alone"] - 1.0) < 0.1
    flagged = {name for name in logits if f"leaves {name} at dev ECE" in caplog.text}
    assert flagged == {name for name, m in metrics.items() if m["ece"] > CALIBRATION_ECE_WARN} == set(logits)
    # each set alone would be calibrated: the warning's numbers show that sharing is the cause
    assert all(m["ece_alone"] < CALIBRATION_ECE_WARN < m["ece"] for m in metrics.values())
    assert f"would give {metrics['fin_tweets_sentiment']['ece_alone']:.3f}" in caplog.text


def test_a_head_with_one_dataset_is_not_second_guessed(caplog: pytest.LogCaptureFixture) -> None:
    logits = {"banking77": _overconfident(n=500, classes=5)}
    metrics = {"banking77": metrics_from_logits(*logits["banking77"], list("abcde"), 1.0, detail=False)}
    with caplog.at_level("WARNING", logger="finetune.pipeline"):
        _check_shared_temperatures(logits, metrics, {"cs_topic": 1.0})
    assert "temperature_alone" not in metrics["banking77"] and "ece_alone" not in metrics["banking77"]
    assert caplog.text == ""


def _two_kinds(seed: int, n: int = 2000) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Two sources of one head, told apart by their embeddings (two clusters in 16 dimensions): the sentences'
    logits are over-confident, the tweets' are calibrated as they come. Made under inference mode, as the
    scorer's are."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        centre = torch.zeros(16)
        centre[0] = 2.0
        sentences, sentence_labels = _overconfident(n=n, classes=3, seed=seed)
        probs = torch.softmax(torch.randn(n, 3, generator=g) * 2, -1)
        tweet_labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
        return {
            "financial_phrasebank": (sentences, sentence_labels, torch.randn(n, 16, generator=g) + centre),
            "fin_tweets_sentiment": (probs.log(), tweet_labels, torch.randn(n, 16, generator=g) - centre),
        }


def test_a_temperature_per_source_calibrates_each_kind_of_text_where_one_cannot() -> None:
    train, dev, test = _two_kinds(seed=1), _two_kinds(seed=2), _two_kinds(seed=3)
    classifier = fit_source_classifier({name: pooled for name, (_, _, pooled) in train.items()})
    temperatures = fit_source_temperatures(classifier, dev)
    assert temperatures[0] > 1.5 and abs(temperatures[1] - 1.0) < 0.2
    spec = TaskSpec(
        "news_sentiment", "news", "sentiment", ("negative", "neutral", "positive"), 1.0,
        sources=tuple(dev), source_temperatures=temperatures,
    )  # fmt: skip
    single = fit_temperature(torch.cat([lg for lg, _, _ in dev.values()]), torch.cat([lb for _, lb, _ in dev.values()]))
    for logits, labels, pooled in test.values():
        per_source = calibrated_probs(spec, logits, pooled, classifier)
        assert ece(per_source, labels) < CALIBRATION_ECE_WARN < ece(torch.softmax(logits / single, -1), labels)
        # a temperature per row changes no argmax either
        assert torch.equal(per_source.argmax(1), logits.argmax(1))
    # text between the two kinds gets a temperature between theirs
    between = row_temperatures(spec, classifier, torch.zeros(1, 16))
    assert temperatures[1] < float(between) < temperatures[0]
    # without its embeddings, a head calibrated per source cannot be scored
    with pytest.raises(ValueError, match="need the pooled embedding"):
        calibrated_probs(spec, test["financial_phrasebank"][0], None, classifier)


def test_a_calibration_per_source_is_recorded_in_the_manifest_and_checked_when_read() -> None:
    sources = ("financial_phrasebank", "fin_tweets_sentiment")
    spec = TaskSpec("news_sentiment", "news", "sentiment", ("negative", "neutral", "positive"), 2.4,
                    sources=sources, source_temperatures=(3.0, 2.0))  # fmt: skip
    manifest = BundleManifest(version="m-x", base_model="b", tasks={"news_sentiment": spec})
    data = manifest.to_json()
    assert data["tasks"]["news_sentiment"]["source_temperatures"] == {
        "financial_phrasebank": 3.0,
        "fin_tweets_sentiment": 2.0,
    }
    assert data["tasks"]["news_sentiment"]["temperature"] == 2.4  # readers that know no more still calibrate
    assert BundleManifest.from_json(data).tasks["news_sentiment"] == spec
    with pytest.raises(ValueError, match="two or more sources"):
        TaskSpec("news_sentiment", "news", "sentiment", ("a", "b"), 1.0, sources=("x",), source_temperatures=(2.0,))
    with pytest.raises(ValueError, match="two or more sources"):
        TaskSpec("news_sentiment", "news", "sentiment", ("a", "b"), 1.0, sources=("x", "y"), source_temperatures=(2.0,))


def test_a_required_confidence_refuses_a_gain_the_dev_rows_cannot_vouch_for() -> None:
    cand, champ = _m(a=0.80, b=0.71), _m(a=0.78, b=0.70)
    assert decide(cand, champ, tolerance=0.02, better_share=0.95, min_confidence=0.9).accepted
    unsure = decide(cand, champ, tolerance=0.02, better_share=0.71, min_confidence=0.9)
    assert not unsure.accepted
    assert any("champion's in 71.0% of paired resamples" in r and "required 90.0%" in r for r in unsure.reasons)
    # the check cannot be skipped for want of a comparison
    blind = decide(cand, champ, tolerance=0.02, better_share=None, min_confidence=0.9)
    assert not blind.accepted and any("cannot be checked" in r for r in blind.reasons)
    # off by default, and never asked of the first model
    assert decide(cand, champ, tolerance=0.02, better_share=0.1).accepted
    assert decide(cand, None, tolerance=0.02, better_share=None, min_confidence=0.9).accepted


def test_the_source_classifier_learns_from_as_many_rows_of_each_source() -> None:
    """Its prior follows the row counts, so every source gives the same number: all of the smallest source's rows
    up to the cap, a reproducible random sample of the others'."""
    from finetune.data import Example

    rows = {
        "financial_phrasebank": [Example(f"sentence {i}", 0, "financial_phrasebank") for i in range(387)],
        "fin_tweets_sentiment": [Example(f"tweet {i}", 1, "fin_tweets_sentiment") for i in range(858)],
    }
    sample = balanced_sample(rows, 4000, random.Random(42))
    assert [len(got) for got in sample.values()] == [387, 387]
    assert all(ex.source == name for name, got in sample.items() for ex in got)
    assert len({ex.text for ex in sample["fin_tweets_sentiment"]}) == 387  # no row twice
    assert sample == balanced_sample(rows, 4000, random.Random(42))
    capped = balanced_sample(rows, 100, random.Random(7))
    assert [len(got) for got in capped.values()] == [100, 100]

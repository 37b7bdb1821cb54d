"""The engine on a real (small, untrained) bundle: same answers as the reference, in order, in every precision."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from inference.device import place
from inference.engine import Engine
from riskstream.modeling import load_bundle, save_bundle

pytestmark = pytest.mark.slow

TEXTS = [
    "Shares of Acme plunged 20% after the company cut its full-year guidance.",
    "I was charged twice for the same card payment, please refund me",
    "Fed holds rates steady",
    "My card still hasn't arrived after three weeks. What is going on?",
    "Quarterly revenue beat expectations on strong cloud demand, and the board raised the dividend by 10 percent.",
    "ok",
] * 30
CHANNELS = ["news", "customer_service", "news", "customer_service", "news", "customer_service"] * 30


@pytest.fixture(scope="module")
def engines(bundle_v1: tuple[Path, str]) -> dict[str, Engine]:
    bundle = load_bundle(bundle_v1[0])
    # a small token budget forces many packs and the tokenizer thread (len(TEXTS) > max_batch_docs)
    return {
        prec: Engine(
            # an engine owns its bundle's modules (bf16 casts them in place): one bundle per precision but fp32
            load_bundle(bundle_v1[0]) if prec != "fp32" else bundle,
            place("cpu", prec, 2),
            token_budget=512,
            max_batch_docs=16,
            sort_window=64,
        )
        for prec in ("fp32", "bf16", "int8")
    }


def test_fp32_matches_the_reference_prediction_in_input_order(engines: dict[str, Engine]) -> None:
    engine = engines["fp32"]
    out = engine.score(TEXTS, CHANNELS)
    assert len(out) == len(TEXTS)
    for channel in ("news", "customer_service"):
        idx = [i for i, c in enumerate(CHANNELS) if c == channel]
        ref = engine.bundle.predict([TEXTS[i] for i in idx], channel)
        sent_task = "news_sentiment" if channel == "news" else "cs_sentiment"
        for i, r in zip(idx, ref, strict=True):
            probs = r[sent_task]
            assert out[i].sentiment.label == max(probs, key=lambda k: probs[k])
            got = out[i].sentiment.probs
            assert got is not None
            for label, p in probs.items():
                assert got[label] == pytest.approx(p, abs=1e-4)
            assert out[i].risk_score == pytest.approx(probs["negative"], abs=1e-4)
    # identical texts get identical answers wherever they sat in the packs
    assert out[0] == out[6] == out[6 * 29]


def test_output_shape_per_document(engines: dict[str, Engine]) -> None:
    out = engines["fp32"].score(TEXTS[:6], CHANNELS[:6])
    for doc, channel in zip(out, CHANNELS[:6], strict=True):
        assert doc.model_version == "test-v1"
        assert doc.tokens > 2
        assert 0.0 <= doc.uncertainty <= 1.0
        margins = [doc.sentiment.margin or 0.0, doc.topic.margin or 0.0]
        assert doc.uncertainty == pytest.approx(1 - min(margins))
        assert doc.sentiment.probs is not None and len(doc.sentiment.probs) == 3
        # large label sets keep only the top-k probabilities
        assert doc.topic.probs is not None and len(doc.topic.probs) == 5
        assert doc.topic.score == pytest.approx(max(doc.topic.probs.values()), abs=1e-5)
        prefix = "news-topic-" if channel == "news" else "intent-"
        assert doc.topic.label.startswith(prefix)


def test_bf16_runs_a_bf16_encoder_and_stays_close_to_fp32(engines: dict[str, Engine]) -> None:
    """bf16 casts the encoder's weights (no autocast), pools and runs the heads in fp32. Untrained heads amplify
    any change near a tie, so the pooled embedding is compared, and the calibrated probabilities loosely."""
    import torch

    assert {p.dtype for p in engines["bf16"].encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in engines["fp32"].encoder.parameters()} == {torch.float32}  # its own bundle, untouched
    tok = engines["fp32"].tokenizer(TEXTS[:6], padding=True, return_tensors="pt")
    ref = engines["fp32"].embed(tok["input_ids"], tok["attention_mask"])
    fast = engines["bf16"].embed(tok["input_ids"], tok["attention_mask"])
    assert fast.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(ref, fast).min()) > 0.99
    pairs = zip(
        engines["fp32"].score(TEXTS[:6], CHANNELS[:6]), engines["bf16"].score(TEXTS[:6], CHANNELS[:6]), strict=True
    )
    for a, b in pairs:
        assert a.sentiment.probs is not None and b.sentiment.probs is not None
        for label in a.sentiment.probs:
            assert b.sentiment.probs[label] == pytest.approx(a.sentiment.probs[label], abs=0.05)


def test_int8_embeddings_stay_close_to_fp32(engines: dict[str, Engine]) -> None:
    """Untrained heads amplify any change, so compare what int8 changes: the pooled embedding the heads read."""
    import torch

    tok = engines["fp32"].tokenizer(TEXTS[:6], padding=True, return_tensors="pt")
    ref = engines["fp32"].embed(tok["input_ids"], tok["attention_mask"])
    fast = engines["int8"].embed(tok["input_ids"], tok["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(ref, fast)
    assert float(cos.mean()) > 0.95 and float(cos.min()) > 0.85
    out = engines["int8"].score(TEXTS[:6], CHANNELS[:6])
    assert [o.model_version for o in out] == ["test-v1"] * 6


def test_unknown_channel_is_refused(engines: dict[str, Engine]) -> None:
    with pytest.raises(ValueError, match="unknown channel"):
        engines["fp32"].score(["x"], ["fax"])


def test_int8_keeps_the_layers_it_is_told_to_keep_in_fp32(bundle_v1: tuple[Path, str]) -> None:
    """``int8_fp32_modules`` globs leave those Linear layers in fp32 and quantize every other one."""
    from torch import nn

    keep = ["encoder.layer.?.output.dense"]
    engine = Engine(load_bundle(bundle_v1[0]), place("cpu", "int8", 2), int8_fp32_modules=keep)
    float_linear = {n for n, m in engine.encoder.named_modules() if type(m) is nn.Linear}
    quantized = {n for n, m in engine.encoder.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized")}
    assert float_linear and quantized
    assert all(n.endswith(".output.dense") and ".attention." not in n for n in float_linear)
    assert any(n.endswith("attention.output.dense") for n in quantized)
    assert any(n.endswith("intermediate.dense") for n in quantized)
    out = engine.score(TEXTS[:6], CHANNELS[:6])
    assert len(out) == 6


def test_the_compiled_engine_answers_like_the_eager_one(
    bundle_v1: tuple[Path, str], engines: dict[str, Engine]
) -> None:
    """``compile`` (torch.compile, dynamic shapes) changes speed, not answers: same labels, near-equal scores."""
    compiled = Engine(
        load_bundle(bundle_v1[0]), place("cpu", "fp32", 2), token_budget=512, max_batch_docs=16, compile=True
    )
    assert compiled.compiled
    texts, channels = TEXTS[:40], CHANNELS[:40]  # several pack shapes
    for a, b in zip(compiled.score(texts, channels), engines["fp32"].score(texts, channels), strict=True):
        assert a.sentiment.label == b.sentiment.label and a.topic.label == b.topic.label
        assert abs(a.sentiment.score - b.sentiment.score) < 1e-3
    int8 = Engine(load_bundle(bundle_v1[0]), place("cpu", "int8", 2), compile=True)
    assert not int8.compiled  # quantized kernels are not compiled: the setting is ignored with a warning


def test_the_engine_reads_texts_as_the_bundle_was_trained_to(bundle_v1: tuple[Path, str], tmp_path: Path) -> None:
    """A bundle trained with the "reader" normalization sees a link as its host: two tweets that differ only in
    their t.co id score the same, in the engine and in the reference prediction. A bundle without it (bundle_v1,
    "none") sees the raw ids, so the same pair scores differently there."""
    from tests.inference.conftest import make_bundle

    pair = [
        "Acme beats estimates, raises outlook https://t.co/Q7xLp2ZkA9 &amp; more",
        "Acme beats estimates, raises outlook https://t.co/b3RtW8mNcY & more",
    ]
    make_bundle(tmp_path / "reader", "test-reader", 1, text_normalization="reader")
    reader = load_bundle(tmp_path / "reader")
    assert reader.manifest.text_normalization == "reader"
    raw = load_bundle(bundle_v1[0])
    assert raw.manifest.text_normalization == "none"
    for bundle, same in ((reader, True), (raw, False)):
        out = Engine(bundle, place("cpu", "fp32", 2)).score(pair, ["news", "news"])
        a, b = out[0].sentiment.probs, out[1].sentiment.probs
        assert a is not None and b is not None
        gap = max([abs(a[k] - b[k]) for k in a] + [abs(out[0].topic.score - out[1].topic.score)])
        assert (gap < 1e-6) is same, (bundle.version, gap)
    ref = reader.predict(pair, "news")
    assert ref[0]["news_topic"] == pytest.approx(ref[1]["news_topic"], abs=1e-6)


def test_a_head_calibrated_per_source_is_served_with_each_documents_temperature(
    bundle_v1: tuple[Path, str], tmp_path: Path
) -> None:
    loaded = load_bundle(bundle_v1[0])
    torch.manual_seed(0)
    classifier = torch.nn.Linear(384, 2)
    with torch.no_grad():
        classifier.weight.mul_(20.0)  # confident, and different from text to text
    loaded.model.source_classifiers["news_sentiment"] = classifier
    loaded.manifest.tasks["news_sentiment"] = replace(
        loaded.manifest.tasks["news_sentiment"],
        sources=("financial_phrasebank", "fin_tweets_sentiment"),
        source_temperatures=(0.5, 4.0),
    )
    save_bundle(loaded.model, loaded.tokenizer, loaded.manifest, tmp_path / "bundle")
    bundle = load_bundle(tmp_path / "bundle")
    texts = [t for t, c in zip(TEXTS[:6], CHANNELS[:6], strict=True) if c == "news"] * 3
    out = Engine(bundle, place("cpu", "fp32", 2)).score(texts, ["news"] * len(texts))
    # by hand: each text's pooled embedding, its temperature, its calibrated probabilities
    with torch.no_grad():
        enc = bundle.tokenizer(texts, padding=True, return_tensors="pt")
        pooled = bundle.model.embed(enc["input_ids"], enc["attention_mask"])
        weights = torch.softmax(classifier(pooled), dim=-1)
        temperatures = (weights @ torch.tensor([0.5, 4.0]).log()).exp()
        expected = torch.softmax(bundle.model.heads["news_sentiment"](pooled) / temperatures[:, None], dim=-1)
    assert float(temperatures.max() / temperatures.min()) > 2  # else this test could not tell one from many
    labels = bundle.manifest.tasks["news_sentiment"].labels
    for doc, row in zip(out, expected.tolist(), strict=True):
        assert doc.sentiment.probs is not None
        assert [doc.sentiment.probs[label] for label in labels] == pytest.approx(row, abs=1e-4)
        assert doc.risk_score == pytest.approx(row[labels.index("negative")], abs=1e-4)


def test_the_engine_splits_a_light_streams_batch_by_length_unless_told_not_to(bundle_v1: tuple[Path, str]) -> None:
    from inference.engine import build_engine
    from inference.settings import EngineSettings

    settings = EngineSettings(bundle=bundle_v1[0], torch_threads=1, precision="fp32")
    assert settings.pack_spread == 1.5  # on unless configured
    # 48 short texts and two long ones: one pack of 50 would pad every row to the longest
    texts = ["rates steady"] * 24 + ["Fed holds rates steady as inflation cools"] * 24 + [TEXTS[4] * 3] * 2
    spread = build_engine(load_bundle(bundle_v1[0]), settings)
    plain = build_engine(load_bundle(bundle_v1[0]), settings.model_copy(update={"pack_spread": 0.0}))
    packs_spread = list(spread._packs(texts))
    packs_plain = list(plain._packs(texts))
    assert len(packs_plain) == 1 < len(packs_spread)
    padded = [sum(p.input_ids.numel() for p in packs) for packs in (packs_spread, packs_plain)]
    assert padded[0] < 0.5 * padded[1]
    # the same answers either way, in input order
    a = spread.score(texts, ["news"] * len(texts))
    b = plain.score(texts, ["news"] * len(texts))
    assert [x.topic.label for x in a] == [x.topic.label for x in b]


def test_a_pack_spread_between_zero_and_one_is_refused_at_start_up() -> None:
    from pydantic import ValidationError

    from inference.settings import EngineSettings

    with pytest.raises(ValidationError, match="pack_spread is 0"):
        EngineSettings(pack_spread=0.5)
    assert EngineSettings(pack_spread=0).pack_spread == 0


def test_a_workers_engine_pads_rows_to_few_shapes_unless_told_not_to(bundle_v1: tuple[Path, str]) -> None:
    """The worker meets a new pack size in nearly every micro-batch; with oneDNN's cache capped, only bucketed row
    counts keep its kernels cached. The engine's own default (bench inference's warm passes) stays off."""
    from inference.hotswap import load_path_engine
    from inference.settings import EngineSettings, WorkerSettings

    path = bundle_v1[0]
    placement = place("cpu", "fp32", 1)
    worker = load_path_engine(path, WorkerSettings(bundle=path), placement)  # as the worker loads its model
    told = load_path_engine(path, WorkerSettings(bundle=path, row_buckets=0), placement)
    alone = load_path_engine(path, EngineSettings(bundle=path), placement)
    assert (worker.row_buckets, told.row_buckets, alone.row_buckets) == (8, 0, 0)
    assert getattr(worker.encoder, "row_buckets", None) == 8  # the lean encoder is what pads
    a = worker.score(TEXTS[:40], CHANNELS[:40])
    b = told.score(TEXTS[:40], CHANNELS[:40])
    assert [(x.sentiment.label, x.topic.label) for x in a] == [(x.sentiment.label, x.topic.label) for x in b]
    assert [x.sentiment.score for x in a] == pytest.approx([x.sentiment.score for x in b], abs=1e-5)

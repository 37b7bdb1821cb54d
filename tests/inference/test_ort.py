"""The onnxruntime backend on a real bundle: the export reproduces PyTorch, is cached and verified by checksum,
and the engine answers like the torch backend through the same packing and heads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from inference.device import place
from inference.engine import Engine
from inference.ort import cache_key, cached_export, quantizable_nodes
from riskstream.modeling import load_bundle
from tests.inference.helpers import MIXED_DOCS, load_in_fresh_process

pytestmark = pytest.mark.slow

TEXTS = [text for text, _ in MIXED_DOCS] * 8
CHANNELS = [channel for _, channel in MIXED_DOCS] * 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def cache(data_dir: Path) -> Path:
    return data_dir / "cache" / "onnx"


@pytest.fixture(scope="module")
def torch_fp32(bundle_v1: tuple[Path, str]) -> Engine:
    return Engine(load_bundle(bundle_v1[0]), place("cpu", "fp32", 2), token_budget=256, max_batch_docs=8)


@pytest.fixture(scope="module")
def ort_fp32(bundle_v1: tuple[Path, str], cache: Path) -> Engine:
    return Engine(
        load_bundle(bundle_v1[0]),
        place("cpu", "fp32", 2),
        token_budget=256,
        max_batch_docs=8,
        backend="onnxruntime",
        onnx_cache=cache,
    )


def test_onnx_fp32_answers_like_torch_fp32(torch_fp32: Engine, ort_fp32: Engine) -> None:
    """Same packs (padded rows of several lengths), same heads: the fused ONNX graph changes speed, not answers."""
    assert ort_fp32.ort is not None
    for a, b in zip(torch_fp32.score(TEXTS, CHANNELS), ort_fp32.score(TEXTS, CHANNELS), strict=True):
        assert (a.sentiment.label, a.topic.label, a.model_version) == (
            b.sentiment.label,
            b.topic.label,
            b.model_version,
        )
        assert a.sentiment.probs is not None and b.sentiment.probs is not None
        for label, p in a.sentiment.probs.items():
            assert b.sentiment.probs[label] == pytest.approx(p, abs=1e-4)
        assert b.topic.score == pytest.approx(a.topic.score, abs=1e-4)
        assert a.tokens == b.tokens
    # padding does not leak into the embedding: a row alone equals the same row padded in a pack
    tok = ort_fp32.tokenizer(TEXTS[:5], padding=True, return_tensors="pt")
    alone = ort_fp32.tokenizer(TEXTS[2:3], return_tensors="pt")
    packed = ort_fp32.embed(tok["input_ids"], tok["attention_mask"])[2]
    single = ort_fp32.embed(alone["input_ids"], alone["attention_mask"])[0]
    assert torch.allclose(packed, single, atol=1e-5)


def test_onnx_int8_stays_close_to_fp32_and_quantizes_the_encoder_gemms(
    bundle_v1: tuple[Path, str], cache: Path, torch_fp32: Engine
) -> None:
    engine = Engine(load_bundle(bundle_v1[0]), place("cpu", "int8", 2), backend="onnxruntime", onnx_cache=cache)
    assert engine.ort is not None
    facts = json.loads(engine.ort.path.with_suffix(".json").read_text())
    assert facts["variant"] == "int8" and facts["fused"] is True
    # 6 layers: a fused attention + 3 weight GEMMs each
    assert facts["quantized_nodes"] == 24 and facts["fp32_kept_nodes"] == []
    tok = engine.tokenizer(TEXTS[:5], padding=True, return_tensors="pt")
    cos = torch.nn.functional.cosine_similarity(
        torch_fp32.embed(tok["input_ids"], tok["attention_mask"]), engine.embed(tok["input_ids"], tok["attention_mask"])
    )
    assert float(cos.min()) > 0.95
    assert len(engine.score(TEXTS, CHANNELS)) == len(TEXTS)


def test_int8_fp32_modules_keep_the_named_onnx_gemms_in_fp32(bundle_v1: tuple[Path, str], cache: Path) -> None:
    """The same globs as the torch int8 path, over the same module names; a fused attention counts as its q/k/v."""
    import onnx

    bundle = load_bundle(bundle_v1[0])
    fused = onnx.load(str(cached_export(bundle, "fp32", cache)))
    quantize, kept = quantizable_nodes(fused, ["encoder.layer.?.output.dense", "encoder.layer.0.attention.self.query"])
    assert len(kept) == 7 and len(quantize) == 17
    assert "Attention_0" in kept and all(k.endswith("/output/dense/MatMul") for k in kept if k != "Attention_0")
    assert not any("attention/output" in k for k in kept)


def test_the_cache_is_reused_and_a_corrupt_file_is_rebuilt(
    bundle_v1: tuple[Path, str], cache: Path, ort_fp32: Engine
) -> None:
    bundle = load_bundle(bundle_v1[0])
    path = cached_export(bundle, "fp32", cache)
    assert path.name == f"{cache_key(bundle.sha256, 'fp32', ())}.onnx"
    stamp = path.stat().st_mtime_ns
    assert cached_export(bundle, "fp32", cache) == path and path.stat().st_mtime_ns == stamp  # from the cache
    with path.open("r+b") as fh:  # flip bytes in the middle of the weights
        fh.seek(path.stat().st_size // 2)
        fh.write(b"\x00\x01\x02\x03" * 16)
    rebuilt = cached_export(bundle, "fp32", cache)
    assert rebuilt == path and path.stat().st_mtime_ns != stamp
    engine = Engine(bundle, place("cpu", "fp32", 2), backend="onnxruntime", onnx_cache=cache)
    assert [d.sentiment.label for d in engine.score(TEXTS[:5], CHANNELS[:5])] == [
        d.sentiment.label for d in ort_fp32.score(TEXTS[:5], CHANNELS[:5])
    ]


def test_the_onnx_backend_refuses_what_it_cannot_run(bundle_v1: tuple[Path, str], cache: Path) -> None:
    bundle = load_bundle(bundle_v1[0])
    with pytest.raises(ValueError, match="fp32 or int8, not bf16"):
        Engine(bundle, place("cpu", "bf16", 2), backend="onnxruntime", onnx_cache=cache)
    with pytest.raises(ValueError, match="unknown backend"):
        Engine(bundle, place("cpu", "fp32", 2), backend="tensorrt")


def test_build_engine_takes_the_backend_and_cache_from_the_settings(
    bundle_v1: tuple[Path, str], data_dir: Path, ort_fp32: Engine
) -> None:
    from inference.engine import build_engine
    from inference.settings import EngineSettings

    settings = EngineSettings(data_dir=data_dir, device="cpu", backend="onnxruntime", torch_threads=2)
    engine = build_engine(load_bundle(bundle_v1[0]), settings)
    assert engine.ort is not None and engine.ort.path.parent == settings.onnx_cache_dir
    assert engine.ort.path == ort_fp32.ort.path  # type: ignore[union-attr]  # the fp32 export, from the cache


def test_an_encoder_that_cannot_be_exported_is_refused_as_an_artifact_error(
    bundle_v1: tuple[Path, str], tmp_path: Path
) -> None:
    """A worker refuses such a model at a hot swap (ArtifactError) and keeps serving; nothing half-written is cached."""
    import shutil

    from riskstream.modeling import ArtifactError

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_v1[0], copy)
    bundle = load_bundle(copy)
    (copy / "encoder" / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match="cannot be exported to ONNX"):
        cached_export(bundle, "fp32", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


LONG = " ".join(["The central bank's decision surprised markets; yields on two-year notes jumped."] * 30)
ODD = ["Ünïcödé café — naïve façade, 東京 stocks +3%", "   leading spaces", "$AAPL $TSLA 🚀🚀", "", "a" * 600]


def test_the_lean_tokenizer_gives_transformers_ids(bundle_v1: tuple[Path, str]) -> None:
    """Same ids as AutoTokenizer for what the engine asks: special tokens, right truncation, no padding."""
    from transformers import AutoTokenizer

    from riskstream.modeling import LeanTokenizer

    texts = [*TEXTS[:5], LONG, *ODD]
    lean = LeanTokenizer(bundle_v1[0] / "encoder")
    full = AutoTokenizer.from_pretrained(bundle_v1[0] / "encoder", local_files_only=True)
    assert lean.pad_token_id == full.pad_token_id
    for max_length in (128, 16):
        kwargs: dict[str, Any] = {"truncation": True, "max_length": max_length, "padding": False}
        assert lean(texts, **kwargs)["input_ids"] == full(texts, **kwargs)["input_ids"]
    assert max(len(ids) for ids in lean(texts)["input_ids"]) > 128  # no truncation unless asked


def test_the_onnx_backend_serves_a_bundle_loaded_without_its_torch_encoder(
    bundle_v1: tuple[Path, str], cache: Path, ort_fp32: Engine
) -> None:
    """``encoder=False`` (what the worker and `score` load for this backend): same answers, no transformers import."""

    lean = Engine(
        load_bundle(bundle_v1[0], encoder=False),
        place("cpu", "fp32", 2),
        token_budget=256,
        max_batch_docs=8,  # the same packs as ort_fp32, so the same floating-point sums
        backend="onnxruntime",
        onnx_cache=cache,
    )
    texts, channels = [*TEXTS, LONG], [*CHANNELS, "news"]
    assert lean.score(texts, channels) == ort_fp32.score(texts, channels)
    with pytest.raises(RuntimeError, match="without its PyTorch encoder"):
        lean.bundle.model.embed(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    first_ids = "len(b.tokenizer(['hello world'], truncation=True, max_length=8)['input_ids'][0])"
    assert load_in_fresh_process(bundle_v1[0], "encoder=False", first_ids) == "4"

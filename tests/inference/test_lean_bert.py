"""The lean encoder (``riskstream.bert``): what the worker and ``riskstream score`` serve by default. It must answer
like transformers' BertModel, load without importing transformers, and refuse or hand over what it cannot serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from inference.device import place
from inference.engine import Engine, int8_linear_names
from riskstream.bert import LeanBert, lean_support
from riskstream.modeling import ENCODER_DIR, ArtifactError, LeanTokenizer, default_base_model, load_bundle, pad
from tests.inference.helpers import MIXED_DOCS, load_in_fresh_process

pytestmark = pytest.mark.slow

TEXTS = [text for text, _ in MIXED_DOCS] * 6
CHANNELS = [channel for _, channel in MIXED_DOCS] * 6


def _padded(tokenizer: LeanTokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad(tokenizer(texts, truncation=True, max_length=128)["input_ids"], 0, multiple=1)


def test_the_lean_encoder_reproduces_transformers_bert_on_padded_rows() -> None:
    """The packaged base encoder, rows of different lengths in one padded batch: every real token's hidden state
    equals transformers' to float rounding (padding positions are never read: the engine mean-pools under the mask)."""
    from transformers import AutoModel

    base = default_base_model()
    lean = LeanBert.from_pretrained(base)
    reference = AutoModel.from_pretrained(base, local_files_only=True).eval()
    input_ids, mask = _padded(LeanTokenizer(base), TEXTS[:5])
    assert not bool(mask.all())  # the batch really has padding
    with torch.inference_mode():
        got = lean(input_ids=input_ids, attention_mask=mask).last_hidden_state
        want = reference(input_ids=input_ids, attention_mask=mask).last_hidden_state
        unpadded = lean(input_ids=input_ids[:1, : int(mask[0].sum())]).last_hidden_state
    real = mask.bool()
    assert (got - want)[real].abs().max().item() < 1e-4
    # no mask at all (a pack of equal lengths) is the same computation
    assert (unpadded[0] - want[0, : int(mask[0].sum())]).abs().max().item() < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_engines_on_either_encoder_give_the_same_answers(bundle_v1: tuple[Path, str], precision: str) -> None:
    """What a user sees: the same labels from the worker whichever encoder serves the bundle; confidences equal to
    rounding in fp32 and close in bf16."""
    engines = {
        impl: Engine(
            load_bundle(bundle_v1[0], encoder_impl=impl),
            place("cpu", precision, 2),
            token_budget=256,
            max_batch_docs=8,
        )
        for impl in ("lean", "transformers")
    }
    assert type(engines["lean"].encoder).__name__ == "LeanBert"
    assert type(engines["transformers"].encoder).__name__ == "BertModel"
    lean, full = (engines[k].score(TEXTS, CHANNELS) for k in ("lean", "transformers"))
    tolerance = 1e-4 if precision == "fp32" else 0.03
    for a, b in zip(lean, full, strict=True):
        assert a.model_version == b.model_version
        for x, y in ((a.sentiment, b.sentiment), (a.topic, b.topic)):
            if precision == "fp32" or (x.margin or 1) > 0.05:  # bf16 may swap a near tie
                assert x.label == y.label
            assert abs(x.score - y.score) < tolerance


def test_loading_leaves_torchs_initialisers_alone() -> None:
    """Loading skips the random initialisation of the weights it overwrites, and only there: a model built after
    (a fine-tune's new heads, in the same process as a served bundle) is initialised as ever."""
    before = {name: getattr(torch.nn.init, name) for name in ("normal_", "uniform_", "kaiming_uniform_")}
    LeanBert.from_pretrained(default_base_model())
    assert {name: getattr(torch.nn.init, name) for name in before} == before
    torch.manual_seed(0)
    fresh = torch.nn.Linear(64, 64)
    assert 0.02 < float(fresh.weight.detach().std()) < 0.2  # kaiming-uniform's spread, not whatever memory held


def test_the_reference_prediction_works_on_a_lean_bundle(bundle_v1: tuple[Path, str]) -> None:
    """``LoadedBundle.predict`` pads its own batches, so it serves a bundle loaded with the lean tokenizer (which
    does not pad) and answers as with transformers."""
    texts = [text for text, channel in MIXED_DOCS if channel == "news"]
    lean, full = (load_bundle(bundle_v1[0], encoder_impl=impl).predict(texts, "news", batch_size=4)
                  for impl in ("lean", "transformers"))  # fmt: skip
    assert len(lean) == len(full) == len(texts)
    for a, b in zip(lean, full, strict=True):
        for task in ("news_sentiment", "news_topic"):
            assert a[task] == pytest.approx(b[task], abs=1e-4)


def test_loading_the_lean_encoder_does_not_import_transformers(bundle_v1: tuple[Path, str]) -> None:
    """The point of the lean encoder: a worker or `riskstream score` starts seconds sooner."""
    assert load_in_fresh_process(bundle_v1[0], "encoder_impl='auto'", "type(b.model.encoder).__name__") == "LeanBert"


def test_the_int8_globs_name_the_same_layers_on_either_encoder(bundle_v1: tuple[Path, str]) -> None:
    """``int8_fp32_modules`` is a user setting: it must keep meaning the same layers (the FFN down-projections)."""
    glob = ["encoder.layer.?.output.dense"]
    lean = load_bundle(bundle_v1[0], encoder_impl="lean").model.encoder
    full = load_bundle(bundle_v1[0], encoder_impl="transformers").model.encoder
    kept = {n for n, _ in lean.named_modules()} - set(int8_linear_names(lean, glob))
    assert {f"encoder.layer.{i}.output.dense" for i in range(6)} <= kept
    # the same quantized layers (transformers' pooler aside, which nothing reads)
    assert set(int8_linear_names(lean, glob)) == set(int8_linear_names(full, glob)) - {"pooler.dense"}
    engine = Engine(load_bundle(bundle_v1[0], encoder_impl="lean"), place("cpu", "int8", 2), int8_fp32_modules=glob)
    assert [s.topic.label for s in engine.score(TEXTS[:5], CHANNELS[:5])]  # the quantized lean encoder runs


def test_an_architecture_it_does_not_cover_goes_to_transformers_or_is_refused(
    bundle_v1: tuple[Path, str], tmp_path: Path
) -> None:
    """``auto`` hands a non-BERT encoder to transformers; ``lean`` says why it cannot serve it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_v1[0], bundle)
    config = bundle / ENCODER_DIR / "config.json"
    cfg = json.loads(config.read_text())
    cfg["position_embedding_type"] = "relative_key"  # a BERT variant the lean encoder does not implement
    config.write_text(json.dumps(cfg))
    assert lean_support(bundle / ENCODER_DIR) == "position_embedding_type 'relative_key' is not absolute"
    auto = load_bundle(bundle, verify=False, encoder_impl="auto")
    assert type(auto.model.encoder).__name__ == "BertModel"
    with pytest.raises(ArtifactError, match="relative_key"):
        load_bundle(bundle, verify=False, encoder_impl="lean")
    (bundle / ENCODER_DIR / "model.safetensors").unlink()
    assert lean_support(bundle / ENCODER_DIR) == "no model.safetensors"


@pytest.mark.parametrize(("dtype", "expected"), [(torch.float32, "gelu"), (torch.bfloat16, "gelu+add")])
def test_fused_cpu_kernels_answer_as_the_plain_path(dtype: torch.dtype, expected: str) -> None:
    """The engine's default on CPU: GELU (and in bf16 the residual additions) inside the GEMMs. The hidden states
    must match the plain path's (exactly enough in fp32; to bf16 rounding in bf16), and turning it off must give the
    plain path back bit for bit."""
    base = default_base_model()
    encoder = LeanBert.from_pretrained(base).to(dtype=dtype)
    input_ids, mask = _padded(LeanTokenizer(base), TEXTS[:6])
    real = mask.bool()
    with torch.inference_mode():
        plain = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        assert encoder.fuse_cpu_kernels("auto") == expected
        assert encoder.fusion == expected
        fused = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        assert encoder.fuse_cpu_kernels("none") == "none"
        again = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
    diff = (plain - fused)[real].abs()
    if dtype == torch.float32:
        assert diff.max().item() < 1e-4
    else:  # one rounding fewer per fused op: differences of a bf16 unit here and there, none systematic
        assert diff.mean().item() < 0.02
        assert diff.max().item() < 0.5
    assert torch.equal(plain, again)


def test_engines_choose_the_fusion_for_their_path(bundle_v1: tuple[Path, str]) -> None:
    """fp32 and bf16 CPU engines fuse; int8 (quantized kernels of its own) and ``cpu_fusion=False`` do not."""

    def engine(precision: str, cpu_fusion: bool = True) -> Engine:
        return Engine(load_bundle(bundle_v1[0], encoder_impl="lean"), place("cpu", precision, 2), cpu_fusion=cpu_fusion)

    assert engine("fp32").fusion == "gelu"
    assert engine("bf16").fusion == "gelu+add"
    assert engine("int8").fusion == "none"
    plain = engine("fp32", cpu_fusion=False)
    assert plain.fusion == "none"
    fused = engine("fp32")
    for a, b in zip(plain.score(TEXTS, CHANNELS), fused.score(TEXTS, CHANNELS), strict=True):
        assert (a.sentiment.label, a.topic.label) == (b.sentiment.label, b.topic.label)
        assert a.topic.score == pytest.approx(b.topic.score, abs=1e-5)


def test_without_the_fused_operator_the_plain_path_serves(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A PyTorch built without oneDNN (or a future one without the operator): a warning, and the plain path."""
    encoder = LeanBert.from_pretrained(default_base_model())
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with caplog.at_level("WARNING", logger="riskstream.bert"):
        assert encoder.fuse_cpu_kernels("auto") == "none"
    assert "fused CPU kernels are off (this PyTorch has no oneDNN" in caplog.text
    with pytest.raises(ValueError, match=r"unknown fusion 'gelu\+softmax'"):
        encoder.fuse_cpu_kernels("gelu+softmax")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_buckets_change_no_answer(dtype: torch.dtype) -> None:
    """Padding a pass's rows to a bucket size only adds rows that no real token reads: the real tokens' hidden
    states are those of the unpadded pass."""
    base = default_base_model()
    encoder = LeanBert.from_pretrained(base).to(dtype=dtype)
    input_ids, mask = _padded(LeanTokenizer(base), TEXTS[:7])
    assert input_ids.numel() % 8  # the rows really get padded
    with torch.inference_mode():
        plain = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        encoder.row_buckets = 8
        bucketed = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
    assert bucketed.shape == plain.shape
    real = mask.bool()
    assert (plain - bucketed)[real].abs().max().item() < (1e-4 if dtype == torch.float32 else 0.05)


def test_an_engine_buckets_rows_when_asked(bundle_v1: tuple[Path, str]) -> None:
    """``--row-buckets N`` reaches the lean encoder and answers as without (off, 0, by default)."""
    off = Engine(load_bundle(bundle_v1[0], encoder_impl="lean"), place("cpu", "fp32", 2))
    assert off.row_buckets == 0
    engine = Engine(load_bundle(bundle_v1[0], encoder_impl="lean"), place("cpu", "fp32", 2), row_buckets=8)
    assert isinstance(engine.encoder, LeanBert)
    assert engine.encoder.row_buckets == 8
    for a, b in zip(engine.score(TEXTS, CHANNELS), off.score(TEXTS, CHANNELS), strict=True):
        assert (a.sentiment.label, a.topic.label) == (b.sentiment.label, b.topic.label)
        assert a.topic.score == pytest.approx(b.topic.score, abs=1e-5)

"""The model bundle: saved, verified by checksum, loaded; corruption is refused before serving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from riskstream.modeling import (
    SENTIMENT_LABELS,
    TASKS,
    ArtifactError,
    BundleManifest,
    TaskSpec,
    build_untrained,
    default_base_model,
    load_bundle,
    save_bundle,
    verify_bundle,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    torch.manual_seed(0)
    tasks = {
        name: TaskSpec(name, channel, kind, SENTIMENT_LABELS if kind == "sentiment" else ("a", "b", "c"), 1.5)
        for name, (channel, kind) in TASKS.items()
    }
    model, tokenizer = build_untrained(default_base_model(), tasks)
    path = tmp_path_factory.mktemp("bundle") / "v1"
    digest = save_bundle(model, tokenizer, BundleManifest(version="v1", base_model="minilm", tasks=tasks), path)
    return path, digest


def test_round_trip_preserves_predictions_and_temperature(bundle: tuple[Path, str]) -> None:
    path, digest = bundle
    loaded = load_bundle(path, expected_sha256=digest)
    assert loaded.version == "v1" and loaded.sha256 == digest
    assert loaded.manifest.tasks["cs_topic"].temperature == 1.5
    out = loaded.predict(["Shares of ACME fell 10% after the profit warning", "ok"], "news")
    assert set(out[0]) == {"news_sentiment", "news_topic"}
    assert abs(sum(out[0]["news_sentiment"].values()) - 1.0) < 1e-5
    again = load_bundle(path).predict(["Shares of ACME fell 10% after the profit warning", "ok"], "news")
    assert again[0]["news_sentiment"] == pytest.approx(out[0]["news_sentiment"], abs=1e-6)


def test_registry_digest_mismatch_is_refused(bundle: tuple[Path, str]) -> None:
    path, _ = bundle
    with pytest.raises(ArtifactError, match="does not match the registry"):
        load_bundle(path, expected_sha256="0" * 64)


def test_corrupt_or_missing_file_is_refused(bundle: tuple[Path, str], tmp_path: Path) -> None:
    import shutil

    src, _ = bundle
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    with (copy / "heads.safetensors").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        verify_bundle(copy)
    (copy / "heads.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing files"):
        load_bundle(copy)


def test_a_manifest_calibrated_per_source_without_its_classifier_is_refused(
    bundle: tuple[Path, str], tmp_path: Path
) -> None:
    """A manifest edited to calibrate a head per source, over heads saved without the source classifier (the
    manifest is not among the checksummed files): refused with what is missing, never served half-calibrated. A
    field of the wrong shape is refused as an unreadable manifest, not a crash."""
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    task = manifest["tasks"]["news_sentiment"]
    task["source_temperatures"] = [3.0, 2.0]  # a list where the format has {source: temperature}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"manifest\.json is unreadable"):
        load_bundle(copy)
    task["source_temperatures"] = {"financial_phrasebank": 3.0, "fin_tweets_sentiment": 2.0}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"calibrates news_sentiment per source .* no source classifier"):
        load_bundle(copy)

"""End to end on the real SQLite store with a tiny real model: run -> register -> gate -> promote, the gate
refusing a worse candidate, rollback, corrupt artifacts, the eval JSON contract, the exclusive run lock."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from finetune import registry as reg
from finetune.cli import eval_cmd, finetune
from finetune.data import DataError, load_training_data, read_split
from finetune.pipeline import AlreadyRunningError, evaluate_on_dev, run_lock, run_pipeline
from finetune.testing import tiny_settings
from riskstream.db import Database
from riskstream.modeling import ArtifactError, load_bundle, save_bundle
from riskstream.registry import get_champion, get_version, list_versions
from tests.finetune.conftest import write_csv, write_slice

pytestmark = pytest.mark.slow


def _env(seed: Path, data_dir: Path) -> dict[str, str]:
    return {
        "RISKSTREAM_SEED_DATA": str(seed),
        "RISKSTREAM_DATA_DIR": str(data_dir),
        "RISKSTREAM_DATABASE_URL": f"sqlite:///{data_dir / 'riskstream.db'}",
        "RISKSTREAM_GATE_MIN_MACRO_F1": "0",
        "HF_HUB_OFFLINE": "1",
    }


def _register(db: Database, bundle: Path, version: str, seed: Path, data_dir: Path) -> dict[str, Any]:
    """Register a bundle with dev metrics measured on the seed slice (as a fine-tune run would)."""
    loaded = load_bundle(bundle)
    data = load_training_data(seed)
    _, metrics = evaluate_on_dev(
        loaded.model, loaded.tokenizer, loaded.manifest.tasks, data.dev, max_length=32,
        normalization=loaded.manifest.text_normalization, batch_size=64,
        calibrate=False, progress=False,
    )  # fmt: skip
    dev = {n: {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "n": m["n"]} for n, m in metrics.items()}
    with db.session() as session:
        reg.register_candidate(
            session, version=version, base_model="tiny", data_fingerprint=data.fingerprint, config={},
            metrics={"dev": dev}, artifact_path=str(bundle), artifact_sha256=loaded.sha256, actor="test",
        )  # fmt: skip
    return dev


def _collapsed_copy(src: Path, dst: Path, version: str) -> Path:
    """The same model with every head answering its last label for every text (a collapsed head).

    The seed slice's dev sets hold the same number of rows per label, so such a head scores macro-F1 2/(k(k+1)) on a
    head of k labels (0.17 for three): worse than any model that tells two labels apart, by construction.
    """
    loaded = load_bundle(src)
    with torch.no_grad():
        for head in loaded.model.heads.values():
            assert isinstance(head, torch.nn.Linear)
            head.weight.zero_()
            head.bias.zero_()
            head.bias[-1] = 5.0
    loaded.manifest.version = version
    save_bundle(loaded.model, loaded.tokenizer, loaded.manifest, dst)
    return dst


def test_run_trains_registers_and_promotes_a_loadable_bundle(seed_slice: Path, tmp_path: Path, db: Database) -> None:
    settings = tiny_settings(seed_slice, tmp_path, label_smoothing=0.1)
    summary = run_pipeline(settings, db, max_steps=3, progress=False)
    assert summary["status"] == "champion" and summary["promoted"]
    assert summary["gate"]["reasons"] == ["no champion yet: promoted after the sanity check"]
    with db.session() as session:
        champ = get_champion(session)
        assert champ is not None and champ.version == summary["version"]
        assert champ.data_fingerprint == summary["data_fingerprint"]
        # how the model was trained is on record: the knobs, and the precision the CPU trained in
        assert champ.config["label_smoothing"] == 0.1 and champ.config["precision"] == "fp32"
        assert set(champ.metrics["dev"]) == {
            "financial_phrasebank", "fin_tweets_sentiment", "fin_tweets_topic", "cs_sentiment", "banking77",
        }  # fmt: skip
        events = [e.action for e in reg.events(session, champ.version)]
    assert events == ["register", "promote"]
    bundle = load_bundle(Path(champ.artifact_path), expected_sha256=champ.artifact_sha256)
    assert bundle.manifest.tasks["cs_topic"].labels and len(bundle.manifest.tasks["cs_topic"].labels) == 77
    assert all(spec.temperature > 0 for spec in bundle.manifest.tasks.values())
    # reports live beside the bundle, not inside its checksummed directory
    reports = tmp_path / "models" / champ.version / "reports"
    assert (reports / "banking77-dev.json").is_file() and (reports / "banking77-dev-confusion.png").is_file()
    assert (reports / "cs_sentiment-dev-reliability.png").is_file()


def test_label_set_change_is_refused_before_training(seed_slice: Path, tmp_path: Path, db: Database, tiny: Any) -> None:
    path, digest = tiny
    with db.session() as session:
        reg.register_candidate(
            session, version="m-champ", base_model="tiny", data_fingerprint="x", config={}, metrics={},
            artifact_path=str(path), artifact_sha256=digest, actor="test",
        )  # fmt: skip
        reg.promote(session, "m-champ", actor="test")
    seed = tmp_path / "seed"
    shutil.copytree(seed_slice, seed)
    with (seed / "banking77" / "train.csv").open("a", encoding="utf-8", newline="") as fh:
        fh.write("I want to buy bitcoin with my card,crypto_purchase\r\n")
    with pytest.raises(
        DataError, match=r"cs_topic: label set differs from the champion's head \(added \['crypto_purchase'\]"
    ):
        run_pipeline(tiny_settings(seed, tmp_path), db, max_steps=1, progress=False)
    with db.session() as session:
        assert [v.version for v in list_versions(session)] == ["m-champ"]
        champ = get_champion(session)
        assert champ is not None and champ.version == "m-champ"


def test_gate_refuses_a_worse_candidate_and_rollback_restores(
    seed_slice: Path, tmp_path: Path, db: Database, tiny: Any
) -> None:
    good = tmp_path / "models" / "m-good" / "bundle"
    shutil.copytree(tiny[0], good)
    bad = _collapsed_copy(good, tmp_path / "models" / "m-bad" / "bundle", "m-bad")
    good_dev = _register(db, good, "m-good", seed_slice, tmp_path)
    bad_dev = _register(db, bad, "m-bad", seed_slice, tmp_path)
    mean = lambda d: sum(m["macro_f1"] for m in d.values()) / len(d)  # noqa: E731
    assert mean(bad_dev) < mean(good_dev)

    runner = CliRunner()
    env = _env(seed_slice, tmp_path)
    first = runner.invoke(finetune, ["promote", "m-good"], env=env)
    assert first.exit_code == 0, first.output
    refused = runner.invoke(finetune, ["promote", "m-bad"], env=env)
    assert refused.exit_code != 0 and "refused by the gate" in refused.output
    with db.session() as session:
        champ = get_champion(session)
        assert champ is not None and champ.version == "m-good"

    forced = runner.invoke(finetune, ["promote", "m-bad", "--force", "--actor", "alice"], env=env)
    assert forced.exit_code == 0, forced.output
    with db.session() as session:
        champ = get_champion(session)
        assert champ is not None and (champ.version, champ.promoted_by) == ("m-bad", "alice")

    back = runner.invoke(finetune, ["rollback", "--actor", "bob"], env=env)
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout) == {"champion": "m-good", "rolled_back": "m-bad"}
    with db.session() as session:
        champ = get_champion(session)
        assert champ is not None and champ.version == "m-good"
        bad_row = get_version(session, "m-bad")
        assert bad_row is not None and bad_row.status == "retired"
        assert [e.action for e in reg.events(session)] == ["register", "register", "promote", "promote", "rollback"]

    listed = runner.invoke(finetune, ["list", "--json"], env=env)
    assert {v["version"]: v["status"] for v in json.loads(listed.stdout)} == {"m-good": "champion", "m-bad": "retired"}


def test_corrupt_artifact_is_refused_at_promote_and_load(
    seed_slice: Path, tmp_path: Path, db: Database, tiny: Any
) -> None:
    bundle = tmp_path / "models" / "m-corrupt" / "bundle"
    shutil.copytree(tiny[0], bundle)
    with db.session() as session:
        reg.register_candidate(
            session, version="m-corrupt", base_model="tiny", data_fingerprint="x", config={}, metrics={},
            artifact_path=str(bundle), artifact_sha256=tiny[1], actor="test",
        )  # fmt: skip
    heads = bundle / "heads.safetensors"
    blob = bytearray(heads.read_bytes())
    blob[-10] ^= 0xFF
    heads.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match=r"checksum mismatch in heads\.safetensors"):
        load_bundle(bundle, expected_sha256=tiny[1])
    result = CliRunner().invoke(finetune, ["promote", "m-corrupt", "--force"], env=_env(seed_slice, tmp_path))
    assert result.exit_code != 0 and "corrupt or unloadable" in result.output
    with db.session() as session:
        assert get_champion(session) is None
        row = get_version(session, "m-corrupt")
        assert row is not None and row.status == "candidate"


def test_eval_prints_the_contract_json_for_the_champion(
    seed_slice: Path, tmp_path: Path, db: Database, tiny: Any
) -> None:
    runner = CliRunner()
    env = _env(seed_slice, tmp_path)
    none = runner.invoke(eval_cmd, ["--dataset", "banking77", "--split", "test", "--json"], env=env)
    assert none.exit_code != 0 and "no promoted model" in none.output
    with db.session() as session:
        reg.register_candidate(
            session, version="m-eval", base_model="tiny", data_fingerprint="x", config={}, metrics={},
            artifact_path=str(tiny[0]), artifact_sha256=tiny[1], actor="test",
        )  # fmt: skip
        reg.promote(session, "m-eval", actor="test")
    result = runner.invoke(eval_cmd, ["--dataset", "banking77", "--split", "test", "--json"], env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"dataset", "n", "accuracy", "macro_f1", "model_version", "ece", "task", "per_class"} <= set(out)
    assert (out["dataset"], out["model_version"], out["task"], out["n"]) == ("banking77", "m-eval", "cs_topic", 154)
    assert 0.0 <= out["accuracy"] <= 1.0 and len(out["per_class"]) == 77
    assert out["accuracy_ci95"][0] <= out["accuracy"] <= out["accuracy_ci95"][1]
    assert out["macro_f1_ci95"][0] <= out["macro_f1"] <= out["macro_f1_ci95"][1]
    assert {"precision", "recall"} <= set(out["per_class"]["card_arrival"])
    assert Path(out["report"]["confusion_png"]).is_file()
    bad = runner.invoke(eval_cmd, ["--dataset", "nope", "--json"], env=env)
    assert bad.exit_code != 0 and "unknown dataset 'nope'" in bad.output


def test_compare_tells_a_collapsed_candidate_from_its_baseline_row_by_row(
    seed_slice: Path, tmp_path: Path, db: Database, tiny: Any
) -> None:
    bundle = tmp_path / "base"
    shutil.copytree(tiny[0], bundle)
    base_dev = _register(db, bundle, "m-base", seed_slice, tmp_path)
    collapsed_dev = _register(
        db, _collapsed_copy(bundle, tmp_path / "collapsed", "m-collapsed"), "m-collapsed", seed_slice, tmp_path
    )
    runner = CliRunner()
    env = _env(seed_slice, tmp_path)
    result = runner.invoke(finetune, ["compare", "m-base", "m-collapsed", "--split", "dev"], env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["baseline"], out["candidate"], out["split"]) == ("m-base", "m-collapsed", "dev")
    assert set(out["datasets"]) == set(base_dev)
    for name, cmp in out["datasets"].items():
        # the same figures the registry holds for each model's dev run, and their difference
        assert cmp["macro_f1"]["baseline"] == pytest.approx(base_dev[name]["macro_f1"])
        assert cmp["macro_f1"]["candidate"] == pytest.approx(collapsed_dev[name]["macro_f1"])
        assert cmp["n"] == base_dev[name]["n"]
        lo, hi = cmp["macro_f1"]["delta_ci95"]
        assert lo <= cmp["macro_f1"]["delta"] <= hi
    mean_delta = sum(c["macro_f1"]["delta"] for c in out["datasets"].values()) / len(out["datasets"])
    assert out["overall"]["mean_macro_f1_delta"] == pytest.approx(mean_delta)
    assert mean_delta < 0 and out["overall"]["candidate_better_share"] < 0.5
    same = json.loads(
        runner.invoke(finetune, ["compare", "m-base", "m-base", "--dataset", "banking77"], env=env).stdout
    )
    assert same["datasets"]["banking77"]["accuracy"]["delta_ci95"] == [0.0, 0.0]
    unknown = runner.invoke(finetune, ["compare", "m-base", "m-nope"], env=env)
    assert unknown.exit_code != 0 and "unknown model version m-nope" in unknown.output
    # a head whose labels differ (one renamed) cannot be compared row by row, and is refused by name
    renamed = load_bundle(bundle)
    spec = renamed.manifest.tasks["cs_sentiment"]
    renamed.manifest.tasks["cs_sentiment"] = replace(spec, labels=("angry", *spec.labels[1:]))
    renamed.manifest.version = "m-renamed"
    save_bundle(renamed.model, renamed.tokenizer, renamed.manifest, tmp_path / "renamed")
    _register(db, tmp_path / "renamed", "m-renamed", seed_slice, tmp_path)
    refused = runner.invoke(finetune, ["compare", "m-base", "m-renamed", "--dataset", "cs_sentiment"], env=env)
    assert refused.exit_code != 0
    assert "cs_sentiment: m-base and m-renamed have different label sets for cs_sentiment" in refused.output


def test_a_run_compares_its_candidate_with_the_champion_row_by_row_and_can_demand_confidence(
    seed_slice: Path, tmp_path: Path, db: Database, tiny: Any
) -> None:
    _register(db, tiny[0], "m-champ", seed_slice, tmp_path)
    with db.session() as session:
        reg.promote(session, "m-champ", actor="test")
    # two near-chance models of a few steps: no gain can be vouched for at 99.9% on a handful of dev rows
    settings = tiny_settings(seed_slice, tmp_path, gate_min_confidence=0.999)
    summary = run_pipeline(settings, db, max_steps=3, progress=False)
    assert summary["status"] == "rejected" and not summary["promoted"]
    reasons = summary["gate"]["reasons"]
    assert any("of paired resamples of the dev rows, less than the required 99.9%" in r for r in reasons)
    paired = summary["gate"]["paired"]
    assert paired["champion"] == "m-champ" and set(paired["datasets"]) == set(summary["dev"])
    with db.session() as session:
        row = get_version(session, summary["version"])
        assert row is not None and row.metrics["gate"]["paired"]["overall"] == paired["overall"]
        champion_dev = row.metrics["champion_dev"]
        champ = get_champion(session)
        assert champ is not None and champ.version == "m-champ"
    for name, cmp in paired["datasets"].items():
        # both sides of the comparison are the figures the gate compared
        assert cmp["macro_f1"]["candidate"] == pytest.approx(summary["dev"][name]["macro_f1"], abs=1e-4)
        assert cmp["macro_f1"]["baseline"] == pytest.approx(champion_dev[name]["macro_f1"])
    # a manual promotion under the same setting reads the recorded comparison against the same champion
    env = {**_env(seed_slice, tmp_path), "RISKSTREAM_GATE_MIN_CONFIDENCE": "0.999"}
    refused = CliRunner().invoke(finetune, ["promote", summary["version"]], env=env)
    assert refused.exit_code != 0 and "of paired resamples" in refused.output


def test_a_second_run_is_refused_while_one_holds_the_lock(seed_slice: Path, tmp_path: Path, db: Database) -> None:
    settings = tiny_settings(seed_slice, tmp_path)
    with run_lock(tmp_path), pytest.raises(AlreadyRunningError, match="another fine-tune run holds"):
        run_pipeline(settings, db, max_steps=1, progress=False)
    with db.session() as session:
        assert list_versions(session) == []


def test_bad_csv_rows_do_not_stop_a_run(seed_slice: Path, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    shutil.copytree(seed_slice, seed)
    with (seed / "cs_sentiment" / "train.csv").open("a", encoding="utf-8", newline="") as fh:
        fh.write(",negative\r\nbroken,row,here\r\n")
    write_csv(seed / "x" / "unused.csv", [])
    data = load_training_data(seed)
    assert data.stats["cs_sentiment/train"]["empty"] == 1
    assert data.stats["cs_sentiment/train"]["malformed"] == 1


def test_a_head_of_two_datasets_is_calibrated_per_source_and_evaluated_so(tmp_path: Path, db: Database) -> None:
    # enough rows of the two news-sentiment sets for a temperature of their own (MIN_SOURCE_ROWS of each)
    news = {"train": 20, "dev": 12, "test": 12}
    seed = write_slice(tmp_path / "seed", {"financial_phrasebank": news, "fin_tweets_sentiment": news})
    settings = tiny_settings(seed, tmp_path, max_train_per_task=None, max_dev_per_dataset=None)
    summary = run_pipeline(settings, db, max_steps=3, progress=False)
    with db.session() as session:
        champ = get_champion(session)
        assert champ is not None and champ.config["calibration"] == "per_source"
        dev = champ.metrics["dev"]
    bundle = load_bundle(Path(champ.artifact_path), expected_sha256=champ.artifact_sha256)
    spec = bundle.manifest.tasks["news_sentiment"]
    assert set(spec.sources) == {"financial_phrasebank", "fin_tweets_sentiment"}
    temperatures = dict(zip(spec.sources, spec.source_temperatures, strict=True))
    assert summary["temperatures"]["news_sentiment"] == temperatures
    assert bundle.model.source_classifier("news_sentiment") is not None
    # a head trained on one dataset keeps one temperature
    assert not bundle.manifest.tasks["news_topic"].sources and bundle.model.source_classifier("news_topic") is None
    # the source classifier tells news sentences from tweets for most rows of either
    assert dev["financial_phrasebank"]["source_accuracy"] > 0.7
    assert dev["fin_tweets_sentiment"]["source_accuracy"] > 0.7
    # eval scores with the bundle's calibration: each row's temperature lies between the sources'
    result = CliRunner().invoke(
        eval_cmd, ["--dataset", "financial_phrasebank", "--split", "test", "--json"], env=_env(seed, tmp_path)
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["source_temperatures"] == pytest.approx(temperatures)
    assert min(temperatures.values()) <= out["temperature"] <= max(temperatures.values())
    # phrasebank says which labels its annotators all agreed on: eval splits its figures by that
    agreed = len(read_split(seed / "financial_phrasebank" / "allagree" / "test.csv", {})[0])
    parts = out["agreement"]
    assert 0 < parts["unanimous"]["n"] == agreed < out["n"]
    assert parts["unanimous"]["n"] + parts["disputed"]["n"] == out["n"]
    right = sum(p["n"] * p["accuracy"] for p in parts.values())
    assert right == pytest.approx(out["n"] * out["accuracy"])

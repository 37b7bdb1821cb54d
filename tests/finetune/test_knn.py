"""The kNN vote over a head's memory (``--knn-weight``): the vote itself, the mixture, and a run that builds the
memory, saves it in the bundle and serves it through every path (reference prediction, engine, eval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from finetune.calibrate import ece, fit_source_temperatures, fit_temperature, nll
from finetune.cli import eval_cmd
from finetune.data import load_training_data
from finetune.pipeline import run_pipeline
from finetune.testing import tiny_settings
from inference.device import place
from inference.engine import Engine
from riskstream.db import Database
from riskstream.modeling import (
    MEMORY_FILE,
    ArtifactError,
    BundleManifest,
    LabelMemory,
    TaskSpec,
    calibrated_probs,
    load_bundle,
    mix_vote,
)
from riskstream.registry import get_champion, list_versions


def _memory() -> LabelMemory:
    # three rows along two directions: labels 0, 0 (near x) and 1 (y)
    keys = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    return LabelMemory(keys, torch.tensor([0, 0, 1]))


def test_the_vote_gives_each_label_the_weight_of_its_nearest_rows() -> None:
    memory = _memory()
    # nearest row alone: its label, whatever the length of the query (cosine)
    assert memory.vote(torch.tensor([[5.0, 0.2]]), 3, k=1, temperature=0.05).tolist() == [[1.0, 0.0, 0.0]]
    # all three rows at a high temperature: about the label counts, 2/3 and 1/3, and nothing on the third label
    shares = memory.vote(torch.tensor([[1.0, 1.0]]), 3, k=3, temperature=100.0)
    assert shares[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0], abs=0.01)
    # k larger than the memory: every row votes
    assert memory.vote(torch.tensor([[0.0, 1.0]]), 3, k=50, temperature=0.01)[0, 1] > 0.99


def test_the_mixture_is_the_weighted_sum_and_needs_its_memory() -> None:
    spec = TaskSpec("t", "news", "topic", ("a", "b", "c"), temperature=2.0, knn_weight=0.25, knn_k=1)
    logits, pooled = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mixed = calibrated_probs(spec, logits, pooled, memory=_memory())
    head = torch.softmax(logits / 2.0, dim=-1)
    assert mixed.tolist()[0] == pytest.approx((0.75 * head + 0.25 * torch.tensor([[0.0, 1.0, 0.0]])).tolist()[0])
    assert float(mixed.sum()) == pytest.approx(1.0)
    with pytest.raises(ArtifactError, match="memory is missing"):
        calibrated_probs(spec, logits, pooled)
    # a head without the vote is the calibrated head, memory or not
    plain = calibrated_probs(TaskSpec("t", "news", "topic", ("a", "b", "c"), temperature=2.0), logits, pooled)
    assert plain.tolist() == head.tolist()


def _voted(seed: int, n: int = 4000, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits calibrated as they come, labels, a vote that is right 80% of the time): mixing the vote in makes the
    served probabilities under-confident, so the head's temperature for the mixture is not its own."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(1)
    right = torch.rand(n, generator=g) < 0.8
    voted = torch.where(right, labels, (labels + torch.randint(1, classes, (n,), generator=g)) % classes)
    return logits, labels, torch.nn.functional.one_hot(voted, classes).float()


def test_a_head_with_a_vote_is_calibrated_for_the_mixture_it_serves() -> None:
    logits, labels, shares = _voted(seed=0)
    test_logits, test_labels, test_shares = _voted(seed=1)
    alone = fit_temperature(logits, labels)
    through = fit_temperature(logits, labels, vote=(0.3, shares))
    assert abs(alone - 1.0) < 0.05 and through < 0.85  # the vote softens the mixture; the head sharpens to match
    assert nll(logits, labels, through, vote=(0.3, shares)) < nll(logits, labels, alone, vote=(0.3, shares))

    def served_ece(temperature: float) -> float:
        return ece(mix_vote(torch.softmax(test_logits / temperature, -1), 0.3, test_shares), test_labels)

    assert served_ece(through) < served_ece(alone) / 1.5  # on rows it was not fitted on
    # per source: the same, each source's rows mixed with their own vote
    dev = {
        "a": (logits, labels, torch.ones(len(labels), 2)),
        "b": (test_logits, test_labels, -torch.ones(len(labels), 2)),
    }
    classifier = torch.nn.Linear(2, 2)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[4.0, 4.0], [-4.0, -4.0]]))
        classifier.bias.zero_()
    per_source = fit_source_temperatures(classifier, dev, votes=(0.3, {"a": shares, "b": test_shares}))
    assert all(t < 0.85 for t in per_source)


def test_the_manifest_keeps_the_vote_and_refuses_a_bad_one() -> None:
    spec = TaskSpec("t", "news", "topic", ("a", "b"), knn_weight=0.3, knn_k=8, knn_temperature=0.1)
    manifest = BundleManifest(version="v", base_model="b", tasks={"t": spec})
    assert BundleManifest.from_json(manifest.to_json()).tasks["t"] == spec
    assert "knn" not in TaskSpec("t", "news", "topic", ("a", "b")).to_json()  # older readers see nothing new
    with pytest.raises(ValueError, match="kNN needs a weight in"):
        TaskSpec("t", "news", "topic", ("a", "b"), knn_weight=1.5)


@pytest.mark.slow
def test_a_run_with_the_vote_alone_gives_training_texts_their_labels_back(
    seed_slice: Path, tmp_path: Path, db: Database
) -> None:
    # weight 1 and k 1: the customer-service topic is the label of the nearest training row, so every training text
    # of that head must come back with its own label from every path that serves the model. Its head, after three
    # steps, is near chance; the news heads keep their plain heads.
    settings = tiny_settings(seed_slice, tmp_path, knn_weight=1.0, knn_k=1, knn_tasks=("cs_topic",))
    summary = run_pipeline(settings, db, max_steps=3, progress=False)
    with db.session() as session:
        champ = get_champion(session)
        assert champ is not None and champ.version == summary["version"]
        assert champ.config["knn_weight"] == 1.0 and champ.config["knn_tasks"] == ["cs_topic"]
        # the registry's dev metrics say which sets were scored with the vote
        assert champ.metrics["dev"]["banking77"]["knn_weight"] == 1.0
        assert "knn_weight" not in champ.metrics["dev"]["cs_sentiment"]
    bundle = load_bundle(Path(champ.artifact_path), expected_sha256=champ.artifact_sha256)
    assert (Path(champ.artifact_path) / MEMORY_FILE).is_file()
    assert bundle.manifest.tasks["cs_topic"].knn_weight == 1.0
    assert bundle.manifest.tasks["news_topic"].knn_weight == 0.0 and bundle.model.memory("news_topic") is None

    data = load_training_data(seed_slice, max_train_per_task=24, max_dev_per_dataset=24, seed=settings.seed)
    rows = data.train["cs_topic"]
    labels = bundle.manifest.tasks["cs_topic"].labels
    memory = bundle.model.memory("cs_topic")
    assert memory is not None and memory.keys.shape[0] == len(rows)
    wanted = [labels[ex.label] for ex in rows]
    texts = [ex.text for ex in rows]
    reference = bundle.predict(texts, "customer_service")
    assert [max(r["cs_topic"], key=r["cs_topic"].__getitem__) for r in reference] == wanted
    for precision in ("fp32", "bf16"):  # the engine owns (and casts) its bundle's modules: one bundle each
        engine = Engine(load_bundle(Path(champ.artifact_path)), place("cpu", precision, 1))
        served = engine.score(texts, ["customer_service"] * len(texts))
        assert [s.topic.label for s in served] == wanted, precision
    # the head alone does not know them: without the vote most would be wrong (this is what the vote added)
    with torch.no_grad():
        logits = bundle.model.heads["cs_topic"](bundle.model.embed(*_ids(bundle, texts)))
    plain = [labels[int(i)] for i in logits.argmax(dim=1)]
    assert sum(p == w for p, w in zip(plain, wanted, strict=True)) < len(wanted) // 2

    # eval reports the served mixture, and says so
    env = {
        "RISKSTREAM_SEED_DATA": str(seed_slice),
        "RISKSTREAM_DATA_DIR": str(tmp_path),
        "RISKSTREAM_DATABASE_URL": f"sqlite:///{tmp_path / 'riskstream.db'}",
        "HF_HUB_OFFLINE": "1",
    }
    result = CliRunner().invoke(eval_cmd, ["--dataset", "banking77", "--split", "dev", "--json"], env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["knn_weight"] == 1.0 and out["model_version"] == champ.version


@pytest.mark.slow
def test_a_misspelt_head_is_refused_before_training(seed_slice: Path, tmp_path: Path, db: Database) -> None:
    settings = tiny_settings(seed_slice, tmp_path, knn_weight=0.3, knn_tasks=("cs_topics",))
    with pytest.raises(ValueError, match=r"knn_tasks names unknown heads \['cs_topics'\]"):
        run_pipeline(settings, db, max_steps=3, progress=False)
    with db.session() as session:
        assert get_champion(session) is None and list_versions(session) == []


def _ids(bundle: object, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from riskstream.modeling import LoadedBundle, pad

    assert isinstance(bundle, LoadedBundle)
    ids = bundle.tokenizer(bundle.prepare(texts), truncation=True, max_length=bundle.manifest.max_length)
    return pad(ids["input_ids"], bundle.tokenizer.pad_token_id or 0)

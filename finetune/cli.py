"""`riskstream finetune run|evaluate|compare|promote|rollback|list|schedule` and `riskstream eval`."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from finetune.settings import FinetuneSettings
from riskstream.cliutil import echo_json, with_settings

if TYPE_CHECKING:
    import torch

    from finetune.calibrate import Vote
    from finetune.data import Example, ReadStats
    from finetune.evaluate import Scored
    from riskstream.modeling import LoadedBundle, TaskSpec
    from schemas.records import ModelVersionRecord

log = logging.getLogger(__name__)


def _offline() -> None:
    # no model hub is ever contacted: every model is a local directory
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _db(settings: FinetuneSettings) -> Any:
    from riskstream.db import Database

    return Database(settings.db_url)


def _stop_event() -> threading.Event:
    """An event set by SIGTERM/SIGINT (the current training aborts before registering anything)."""
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.warning("received %s: stopping after the current step, registry untouched", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@click.group()
def finetune() -> None:
    """Train, evaluate, promote and roll back models; the periodic fine-tune job."""


@finetune.command("run")
@with_settings(FinetuneSettings)
def run_cmd(settings: FinetuneSettings) -> None:
    """Train a candidate on the seed data (+ analyst labels), calibrate, evaluate on dev, gate, promote or reject.

    Prints a JSON summary. Use --quick for the demo profile (minutes instead of ~30 on a 2-core CPU).
    """
    _offline()
    from finetune.data import DataError
    from finetune.pipeline import AlreadyRunningError, run_pipeline
    from finetune.train import TrainingAbortedError

    stop = _stop_event()
    try:
        summary = run_pipeline(settings, _db(settings), should_stop=stop.is_set, progress=True)
    except (DataError, AlreadyRunningError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except TrainingAbortedError as exc:
        raise click.ClickException(f"training aborted, registry untouched: {exc}") from exc
    echo_json(summary)


def _record(settings: FinetuneSettings, version: str | None) -> ModelVersionRecord:
    """The registry record of VERSION, or of the champion when VERSION is None."""
    from riskstream.registry import get_champion, get_version

    with _db(settings).session() as session:
        record = get_version(session, version) if version else get_champion(session)
    if record is None:
        if version:
            raise click.ClickException(f"unknown model version {version} (see `riskstream finetune list`)")
        raise click.ClickException(
            "no promoted model in the registry: run `riskstream finetune run` (or `--quick`) first"
        )
    return record


def _load(settings: FinetuneSettings, record: ModelVersionRecord) -> LoadedBundle:
    """The bundle of a registry record, verified against its recorded checksum."""
    import torch

    from finetune.train import select_device
    from riskstream.modeling import ArtifactError, load_bundle

    torch.set_num_threads(settings.resolved_threads())
    try:
        return load_bundle(
            Path(record.artifact_path), device=select_device(settings.device), expected_sha256=record.artifact_sha256
        )
    except ArtifactError as exc:
        raise click.ClickException(f"model {record.version} refused: {exc}") from exc


def _dataset_names(datasets: tuple[str, ...]) -> tuple[str, ...]:
    from finetune.data import DATASETS

    for name in datasets:
        if name not in DATASETS:
            raise click.ClickException(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return datasets or tuple(DATASETS)


def _score_split(
    settings: FinetuneSettings, bundle: LoadedBundle, version: str, name: str, split: str
) -> tuple[Scored, ReadStats, TaskSpec, list[Example]]:
    """Score one dataset's split with a loaded bundle: (scored rows, read stats, the head's spec, the rows)."""
    from finetune.data import DATASETS, DataError, read_eval_split
    from finetune.evaluate import score_examples

    task = DATASETS[name].task
    spec = bundle.manifest.tasks.get(task)
    if spec is None:
        raise click.ClickException(f"model {version} has no head for task {task}")
    try:
        rows, stats = read_eval_split(settings.require_seed_data(), name, split, spec.labels)
    except DataError as exc:
        raise click.ClickException(str(exc)) from exc
    scored = score_examples(
        bundle.model, bundle.tokenizer, rows, task, max_length=bundle.manifest.max_length,
        normalization=bundle.manifest.text_normalization,
        batch_size=settings.eval_batch_size, progress=True, desc=f"{version} {name}/{split}",
    )  # fmt: skip
    return scored, stats, spec, rows


def _by_agreement(
    scored: Scored,
    rows: list[Example],
    labels: list[str],
    temperature: float | torch.Tensor,
    vote: Vote | None,
) -> dict[str, dict[str, Any]]:
    """Metrics on the rows every annotator agreed on and on the disputed ones, for a dataset that says which (else
    empty): where a model's errors are, and what a figure on the whole set is made of."""
    import torch

    from finetune.evaluate import metrics_from_logits

    disputed = torch.tensor([ex.ambiguous for ex in rows], dtype=torch.bool)
    if not disputed.any() or disputed.all():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, mask in (("unanimous", ~disputed), ("disputed", disputed)):
        t = temperature[mask] if isinstance(temperature, torch.Tensor) and temperature.dim() > 0 else temperature
        v = None if vote is None else (vote[0], vote[1][mask])
        m = metrics_from_logits(scored.logits[mask], scored.labels[mask], labels, t, vote=v, detail=False)
        out[name] = {k: m[k] for k in ("n", "accuracy", "macro_f1", "ece")}
    return out


def _evaluate_version(
    settings: FinetuneSettings, version: str | None, datasets: tuple[str, ...], split: str
) -> dict[str, Any]:
    from finetune.data import DATASETS
    from finetune.evaluate import head_vote, metrics_from_logits
    from finetune.report import reports_dir, write_report
    from riskstream.modeling import row_temperatures

    record = _record(settings, version)
    names = _dataset_names(datasets)
    settings.require_seed_data()
    bundle = _load(settings, record)
    results: dict[str, Any] = {}
    out_dir = reports_dir(settings.models_dir, record.version)
    for name in names:
        task = DATASETS[name].task
        scored, stats, spec, rows = _score_split(settings, bundle, record.version, name, split)
        temperature = row_temperatures(spec, bundle.model.source_classifier(task), scored.pooled)
        vote = head_vote(spec, bundle.model, scored.pooled)
        m = metrics_from_logits(scored.logits, scored.labels, spec.labels, temperature, vote=vote)
        agreement = _by_agreement(scored, rows, list(spec.labels), temperature, vote)
        result: dict[str, Any] = {
            "dataset": name,
            "split": split,
            "task": task,
            "model_version": record.version,
            "skipped": {
                "empty": stats.empty,
                "malformed": stats.malformed,
                "unknown_labels": dict(stats.unknown_labels),
            },
            **m,
        }
        if spec.sources:  # calibrated per source: "temperature" above is the mean of the rows' temperatures
            result["source_temperatures"] = dict(zip(spec.sources, spec.source_temperatures, strict=True))
        if agreement:
            result["agreement"] = agreement
        written = write_report(out_dir, f"{name}-{split}", result, list(spec.labels))
        result.pop("confusion", None)
        result.pop("reliability", None)
        result["report"] = written
        results[name] = result
    return results


@finetune.command("evaluate")
@click.argument("version", required=False)
@click.option("--dataset", "datasets", multiple=True, help="Dataset(s) to evaluate on (default: all five).")
@click.option("--split", default="dev", show_default=True, type=click.Choice(["train", "dev", "test"]))
@with_settings(FinetuneSettings)
def evaluate_cmd(version: str | None, datasets: tuple[str, ...], split: str, settings: FinetuneSettings) -> None:
    """Evaluate VERSION (default: the champion) and write its report (JSON + PNGs) under <data_dir>/models/."""
    _offline()
    echo_json(_evaluate_version(settings, version, datasets, split))


@finetune.command("compare")
@click.argument("baseline")
@click.argument("candidate")
@click.option("--dataset", "datasets", multiple=True, help="Dataset(s) to compare on (default: all five).")
@click.option("--split", default="dev", show_default=True, type=click.Choice(["train", "dev", "test"]))
@with_settings(FinetuneSettings)
def compare_cmd(
    baseline: str, candidate: str, datasets: tuple[str, ...], split: str, settings: FinetuneSettings
) -> None:
    """Is CANDIDATE really better than BASELINE? A paired bootstrap on the same rows.

    Scores both versions on each dataset's split and prints, per dataset, both accuracies and macro-F1s, the
    difference (candidate minus baseline) and its 95% interval, and the same for the mean macro-F1 over the
    datasets (the gate's "overall"). An interval that straddles 0 means the rows cannot tell the two apart.
    """
    _offline()
    from finetune.data import DATASETS
    from finetune.evaluate import Predictions, paired_summary, predicted_labels
    from riskstream.modeling import ArtifactError, read_manifest

    records = [_record(settings, baseline), _record(settings, candidate)]
    names = _dataset_names(datasets)
    settings.require_seed_data()
    # label sets first, from the manifests alone: a comparison that cannot be made is refused before any scoring
    labels: dict[str, tuple[str, ...]] = {}
    try:
        manifests = [read_manifest(Path(r.artifact_path)) for r in records]
    except ArtifactError as exc:
        raise click.ClickException(f"refused: {exc}") from exc
    for name in names:
        task = DATASETS[name].task
        heads: list[tuple[str, ...]] = []
        for record, manifest in zip(records, manifests, strict=True):
            spec = manifest.tasks.get(task)
            if spec is None:
                raise click.ClickException(f"model {record.version} has no head for task {task}")
            heads.append(tuple(spec.labels))
        if heads[0] != heads[1]:
            raise click.ClickException(
                f"{name}: {baseline} and {candidate} have different label sets for {task}; "
                "they cannot be compared row by row"
            )
        labels[name] = heads[0]
    predictions: list[Predictions] = []
    for record in records:  # one model in memory at a time
        bundle = _load(settings, record)
        preds: Predictions = {}
        for name in names:
            scored, _, spec, _ = _score_split(settings, bundle, record.version, name, split)
            preds[name] = (scored.labels.numpy(), predicted_labels(spec, bundle.model, scored.logits, scored.pooled))
        predictions.append(preds)
        del bundle
    summary = paired_summary(predictions[0], predictions[1], {n: len(labels[n]) for n in names})
    if summary is None:
        raise click.ClickException(f"no rows to compare on in the {split} split of {', '.join(names)}")
    echo_json({"baseline": records[0].version, "candidate": records[1].version, "split": split, **summary})


@finetune.command("promote")
@click.argument("version")
@click.option("--force", is_flag=True, help="Skip the metric gate (the artifact is still verified and loaded).")
@with_settings(FinetuneSettings)
def promote_cmd(version: str, force: bool, settings: FinetuneSettings) -> None:
    """Promote VERSION to champion: gated on its stored dev metrics vs the champion's unless --force.

    The artifact is always verified and loaded first. --actor NAME records who did it.
    """
    _offline()
    from finetune import registry as reg
    from finetune.gate import decide
    from riskstream.modeling import ArtifactError
    from riskstream.registry import get_champion, get_version

    db = _db(settings)
    who = settings.actor
    with db.session() as session:
        record = get_version(session, version)
        if record is None:
            raise click.ClickException(f"unknown model version {version}")
        champion = get_champion(session)
        detail: dict[str, Any] = {"forced": force}
        if not force:
            # the paired comparison recorded by the candidate's run counts only against the champion it was made with
            paired = record.metrics.get("gate", {}).get("paired") or {}
            against_current = champion is not None and paired.get("champion") == champion.version
            decision = decide(
                record.metrics.get("dev", {}),
                champion.metrics.get("dev", {}) if champion is not None else None,
                tolerance=settings.gate_tolerance,
                min_improvement=settings.gate_min_improvement,
                min_macro_f1=settings.gate_min_macro_f1,
                better_share=paired["overall"]["candidate_better_share"] if against_current else None,
                min_confidence=settings.gate_min_confidence,
            )
            if not decision.accepted:
                raise click.ClickException(
                    "refused by the gate: " + "; ".join(decision.reasons) + " (use --force to override)"
                )
            detail["gate"] = decision.to_json()
        try:
            previous = reg.promote(session, version, actor=who, detail=detail)
        except ArtifactError as exc:
            raise click.ClickException(f"refused: the artifact of {version} is corrupt or unloadable: {exc}") from exc
        except reg.RegistryError as exc:
            raise click.ClickException(str(exc)) from exc
    echo_json({"promoted": version, "previous_champion": previous, "by": who, "forced": force})


@finetune.command("rollback")
@with_settings(FinetuneSettings)
def rollback_cmd(settings: FinetuneSettings) -> None:
    """Restore the previous champion (the current one is retired). --actor NAME records who did it."""
    _offline()
    from finetune import registry as reg
    from riskstream.modeling import ArtifactError

    db = _db(settings)
    with db.session() as session:
        try:
            restored, rolled_back = reg.rollback(session, actor=settings.actor)
        except ArtifactError as exc:
            raise click.ClickException(f"refused: the previous champion's artifact is unusable: {exc}") from exc
        except reg.RegistryError as exc:
            raise click.ClickException(str(exc)) from exc
    echo_json({"champion": restored, "rolled_back": rolled_back})


@finetune.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@with_settings(FinetuneSettings)
def list_cmd(as_json: bool, settings: FinetuneSettings) -> None:
    """The registered model versions, newest first."""
    from riskstream.registry import list_versions

    db = _db(settings)
    with db.session() as session:
        versions = list_versions(session)
    if as_json:
        echo_json(
            [
                {
                    **v.model_dump(mode="json", exclude={"config", "metrics"}),
                    "overall": v.metrics.get("overall", {}),
                    "gate": v.metrics.get("gate", {}),
                }
                for v in versions
            ]
        )
        return
    if not versions:
        click.echo("no model versions registered")
        return
    click.echo(f"{'version':32} {'status':10} {'dev mean macro-F1':>17}  {'promoted by':14} created")
    for v in versions:
        f1 = v.metrics.get("overall", {}).get("mean_macro_f1")
        f1s = f"{f1:.4f}" if isinstance(f1, float) else "-"
        click.echo(f"{v.version:32} {v.status:10} {f1s:>17}  {v.promoted_by or '-':14} {v.created_at:%Y-%m-%d %H:%M}")


@finetune.command("schedule")
@click.option("--max-runs", type=int, default=None, help="Exit after this many runs (default: run until SIGTERM).")
@with_settings(FinetuneSettings)
def schedule_cmd(max_runs: int | None, settings: FinetuneSettings) -> None:
    """Retrain on an interval and/or when enough new labels arrived; SIGTERM stops cleanly."""
    _offline()
    from finetune.schedule import run_schedule

    stop = _stop_event()
    runs = run_schedule(settings, _db(settings), stop, max_runs=max_runs)
    log.info("schedule exited after %d run(s)", runs)


def _interval_text(interval: list[float] | None) -> str:
    return f"[95% {interval[0]:.4f}-{interval[1]:.4f}]" if interval else ""


@click.command("eval")
@click.option("--dataset", required=True, help="Seed dataset name (e.g. banking77).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "dev", "test"]))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the contract).")
@with_settings(FinetuneSettings)
def eval_cmd(dataset: str, split: str, as_json: bool, settings: FinetuneSettings) -> None:
    """Score the promoted model on $RISKSTREAM_SEED_DATA/DATASET/SPLIT.csv and print its metrics."""
    _offline()
    result = _evaluate_version(settings, None, (dataset,), split)[dataset]
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
        return
    click.echo(
        f"{dataset}/{split}  model {result['model_version']}  n={result['n']}  "
        f"accuracy={result['accuracy']:.4f} {_interval_text(result.get('accuracy_ci95'))}  "
        f"macro-F1={result['macro_f1']:.4f} {_interval_text(result.get('macro_f1_ci95'))}  ECE={result['ece']:.4f}"
    )
    for kind, m in result.get("agreement", {}).items():  # datasets that say which labels annotators disputed
        click.echo(f"  {kind} rows: n={m['n']}  accuracy={m['accuracy']:.4f}  macro-F1={m['macro_f1']:.4f}")

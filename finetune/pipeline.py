"""One fine-tune run: data -> train -> calibrate -> evaluate on dev -> save -> register -> gate -> promote/reject.

Order matters for safety: the bundle is written atomically (``save_bundle``) and registered only after it was
trained, calibrated and evaluated, so an interrupted run (exception, SIGTERM, SIGKILL) leaves the registry and
the champion untouched. Runs are exclusive: an ``fcntl`` lock file under the data dir (one host) plus the
``finetune_runs`` table (a 'running' row from another host blocks too).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

import torch
from sqlalchemy import select
from torch import nn

from finetune import registry as reg
from finetune.calibrate import Vote, ece, fit_source_classifier, fit_source_temperatures, fit_temperature
from finetune.data import DATASETS, Example, TrainingData, check_label_sets, count_labels, load_training_data
from finetune.evaluate import (
    Predictions,
    Scored,
    head_vote,
    metrics_from_logits,
    paired_summary,
    predicted_labels,
    score_examples,
    summarize,
)
from finetune.gate import decide
from finetune.report import reports_dir, write_report
from finetune.settings import FinetuneSettings
from finetune.train import TrainingAbortedError, autocast_for, train
from riskstream.db import Database
from riskstream.modeling import (
    ArtifactError,
    BundleManifest,
    LabelMemory,
    MultiTaskModel,
    TaskSpec,
    load_bundle,
    mix_vote,
    read_manifest,
    row_temperatures,
    save_bundle,
)
from riskstream.registry import get_champion
from schemas.db import FinetuneRunRow

log = logging.getLogger(__name__)

STALE_RUN_AFTER = timedelta(hours=6)


class AlreadyRunningError(RuntimeError):
    """Another fine-tune run holds the lock."""


@contextmanager
def run_lock(data_dir: Path) -> Iterator[Path]:
    """Exclusive, non-blocking lock on ``<data_dir>/finetune.lock``; released by the OS if the process dies."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "finetune.lock"
    fh: IO[str] = path.open("a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise AlreadyRunningError(f"another fine-tune run holds {path}") from exc
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()} {os.getpid()}\n")
        fh.flush()
        yield path
    finally:
        fh.close()


def _start_run_row(db: Database, labels_seen: int, detail: dict[str, Any]) -> int:
    """Insert the 'running' row; stale rows of this host are failed, a live row of another host refuses."""
    host = socket.gethostname()
    now = datetime.now(tz=UTC)
    with db.session() as session, session.begin():
        for row in session.scalars(select(FinetuneRunRow).where(FinetuneRunRow.status == "running")).all():
            other_host = (row.detail or {}).get("host")
            if other_host not in (None, host) and now - row.started_at < STALE_RUN_AFTER:
                raise AlreadyRunningError(f"fine-tune run {row.id} is running on {other_host} since {row.started_at}")
            row.status = "failed"
            row.finished_at = now
            row.detail = {**(row.detail or {}), "error": "interrupted (found stale at the next run)"}
        run = FinetuneRunRow(started_at=now, status="running", labels_seen=labels_seen, detail={"host": host, **detail})
        session.add(run)
        session.flush()
        return run.id


def _finish_run_row(db: Database, run_id: int, status: str, version: str | None, detail: dict[str, Any]) -> None:
    with db.session() as session, session.begin():
        row = session.get(FinetuneRunRow, run_id)
        if row is None:  # pragma: no cover
            return
        row.status = status
        row.finished_at = datetime.now(tz=UTC)
        row.candidate_version = version
        row.detail = {**(row.detail or {}), **detail}


def _champion_specs(path: str) -> dict[str, TaskSpec] | None:
    try:
        return read_manifest(Path(path)).tasks
    except ArtifactError as exc:
        log.warning("cannot read the champion's manifest (%s); label sets are not compared", exc)
        return None


def _dev_by_task(data: TrainingData) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in data.dev:
        out.setdefault(DATASETS[name].task, []).append(name)
    return out


# the calibration target; a dev ECE above it after calibration is logged
CALIBRATION_ECE_WARN = 0.05


# train rows per source dataset the source classifier of a calibration per source is fitted on: as many of each as
# the smallest source has (a balanced prior), at most this many; and the train and dev rows a source needs (each)
# before it gets a temperature of its own. Measured on four full models (docs/models.md, "How many rows the source
# classifier learns from"): 3,870 rows per source instead of 1,000 lowered the larger news-sentiment dev ECE of each
# (mean 0.048 -> 0.041) and its spread across samples, for 18 s more of a full run (2-core Xeon: 5,740 more rows).
SOURCE_CLASSIFIER_ROWS = 4000
MIN_SOURCE_ROWS = 30


def balanced_sample(rows_by_source: dict[str, list[Example]], cap: int, rng: random.Random) -> dict[str, list[Example]]:
    """The same number of rows of every source, as many as the smallest source has and at most ``cap``: a random
    sample of each, drawn in the mapping's order from ``rng`` (the run's seed, so reproducible)."""
    k = min(cap, *(len(rows) for rows in rows_by_source.values()))
    return {name: rng.sample(rows, k) for name, rows in rows_by_source.items()}


def evaluate_on_dev(
    model: MultiTaskModel,
    tokenizer: Any,
    specs: dict[str, TaskSpec],
    dev: dict[str, list[Example]],
    *,
    max_length: int,
    normalization: str,
    batch_size: int,
    calibrate: bool,
    calibration: Literal["per_head", "per_source"] = "per_head",
    train_rows: dict[str, list[Example]] | None = None,
    seed: int = 42,
    progress: bool = True,
    desc: str = "dev",
    predictions: Predictions | None = None,
) -> tuple[dict[str, TaskSpec], dict[str, dict[str, Any]]]:
    """(the specs with their calibration, metrics per dataset).

    With ``calibrate`` the temperatures are fitted on these rows (all datasets of a task pooled). With
    ``calibration="per_source"`` and ``train_rows`` (task -> train examples), a head with two or more dev datasets
    gets a temperature per dataset and a source classifier, which is attached to ``model.source_classifiers``
    (``save_bundle`` writes it). Without ``calibrate`` the specs' calibrations and the model's classifiers are used.
    ``predictions``, when given, receives each dataset's (gold, predicted) label ids, for a paired comparison."""
    scored: dict[str, Scored] = {}
    for name, rows in dev.items():
        task = DATASETS[name].task
        if task not in specs or not rows:
            continue
        scored[name] = score_examples(
            model,
            tokenizer,
            rows,
            task,
            max_length=max_length,
            normalization=normalization,
            batch_size=batch_size,
            progress=progress,
            desc=f"{desc} {name}",
        )
    # the kNN votes do not depend on the temperatures, and those are fitted for the mixture the model serves
    votes = {name: head_vote(specs[DATASETS[name].task], model, sc.pooled) for name, sc in scored.items()}
    out_specs: dict[str, TaskSpec] = {}
    for task, spec in specs.items():
        names = [n for n in scored if DATASETS[n].task == task]
        if not calibrate or not names:
            out_specs[task] = spec
            continue
        task_votes = _task_votes(spec, votes, names)
        single = fit_temperature(
            torch.cat([scored[n].logits for n in names]),
            torch.cat([scored[n].labels for n in names]),
            vote=None if task_votes is None else (task_votes[0], torch.cat([task_votes[1][n] for n in names])),
        )
        out_specs[task] = replace(spec, temperature=single, sources=(), source_temperatures=())
        if task in model.source_classifiers:
            del model.source_classifiers[task]
        if calibration == "per_source" and train_rows is not None and len(names) >= 2:
            fitted = _fit_per_source(
                model, tokenizer, task, scored={n: scored[n] for n in names}, train_rows=train_rows[task],
                max_length=max_length, normalization=normalization, batch_size=batch_size, seed=seed,
                progress=progress, votes=task_votes,
            )  # fmt: skip
            if fitted is not None:
                out_specs[task] = replace(out_specs[task], sources=tuple(names), source_temperatures=fitted[0])
                model.source_classifiers[task] = fitted[1]
    metrics: dict[str, dict[str, Any]] = {}
    for name, sc in scored.items():
        task = DATASETS[name].task
        spec = out_specs[task]
        source_classifier = model.source_classifier(task)
        temperature = row_temperatures(spec, source_classifier, sc.pooled)
        metrics[name] = metrics_from_logits(sc.logits, sc.labels, spec.labels, temperature, vote=votes[name])
        if predictions is not None:
            predictions[name] = (sc.labels.numpy(), predicted_labels(spec, model, sc.logits, sc.pooled))
        if spec.sources and source_classifier is not None and name in spec.sources:
            with torch.no_grad():
                guess = source_classifier(sc.pooled).argmax(dim=1)
            metrics[name]["source_accuracy"] = float((guess == spec.sources.index(name)).float().mean())
    if calibrate:
        _check_shared_temperatures(
            {n: (sc.logits, sc.labels) for n, sc in scored.items()},
            metrics,
            {t: s.temperature for t, s in out_specs.items()},
            per_source={t for t, s in out_specs.items() if s.sources},
            votes=votes,
        )
    return out_specs, metrics


def _task_votes(
    spec: TaskSpec, votes: dict[str, Vote | None], names: list[str]
) -> tuple[float, dict[str, torch.Tensor]] | None:
    """(the head's vote weight, each of its datasets' rows' label shares), or None for a head without a vote."""
    if spec.knn_weight <= 0:
        return None
    shares: dict[str, torch.Tensor] = {}
    for name in names:
        vote = votes[name]
        assert vote is not None  # head_vote gives every dataset of a voting head its shares
        shares[name] = vote[1]
    return spec.knn_weight, shares


def knn_heads(settings: FinetuneSettings, specs: dict[str, TaskSpec]) -> list[str]:
    """The heads that get a memory and a kNN vote (none when ``knn_weight`` is 0); a name that is not a head of
    this run is refused, before any training."""
    if settings.knn_weight <= 0:
        return []
    unknown = sorted(set(settings.knn_tasks) - set(specs))
    if unknown:
        raise ValueError(f"knn_tasks names unknown heads {unknown} (heads of this run: {sorted(specs)})")
    return [t for t in specs if not settings.knn_tasks or t in settings.knn_tasks]


def attach_memories(
    model: MultiTaskModel,
    tokenizer: Any,
    specs: dict[str, TaskSpec],
    train_rows: dict[str, list[Example]],
    *,
    heads: list[str],
    settings: FinetuneSettings,
    device: torch.device,
    progress: bool = True,
) -> dict[str, TaskSpec]:
    """Give each of ``heads`` its memory (the pooled embeddings of the rows it was trained on, analysts' labels
    included, with their labels) and its kNN vote; returns the specs with the vote. Scored like training (bf16
    autocast where training used it): the news topics' 15,290 tweets took 31-35 s on a 2-core CPU with native bf16."""
    autocast, _, _ = autocast_for(device, settings.cpu_bf16)
    out = dict(specs)
    for task in heads:
        rows = train_rows.get(task, [])
        if not rows:
            log.warning("%s: no training rows, so no memory and no kNN vote", task)
            continue
        with autocast():
            scored = score_examples(
                model, tokenizer, rows, task, max_length=settings.max_length,
                normalization=settings.text_normalization, batch_size=settings.eval_batch_size, progress=progress,
                desc=f"memory {task}",
            )  # fmt: skip
        model.memories[task] = LabelMemory(scored.pooled.float(), scored.labels)
        out[task] = replace(
            specs[task], knn_weight=settings.knn_weight, knn_k=settings.knn_k, knn_temperature=settings.knn_temperature
        )
        log.info("%s: kNN memory of %d training rows (weight %.2f, k %d)", task, len(rows), settings.knn_weight,
                 settings.knn_k)  # fmt: skip
    return out


def _fit_per_source(
    model: MultiTaskModel,
    tokenizer: Any,
    task: str,
    *,
    scored: dict[str, Scored],
    train_rows: list[Example],
    max_length: int,
    normalization: str,
    batch_size: int,
    seed: int,
    progress: bool,
    votes: tuple[float, dict[str, torch.Tensor]] | None = None,
) -> tuple[tuple[float, ...], nn.Linear] | None:
    """(a temperature per source, the source classifier) for one head, or None (logged) when a source has too few
    dev or train rows to be calibrated on its own. ``votes``: the head's kNN vote on each source's dev rows."""
    names = list(scored)
    by_source: dict[str, list[Example]] = {}
    for name in names:
        rows = [ex for ex in train_rows if ex.source == name]
        if len(rows) < MIN_SOURCE_ROWS or scored[name].labels.shape[0] < MIN_SOURCE_ROWS:
            log.warning(
                "%s: %s has %d train and %d dev rows, too few for a temperature of its own (%d of each needed); "
                "the head keeps one temperature", task, name, len(rows), scored[name].labels.shape[0],
                MIN_SOURCE_ROWS,
            )  # fmt: skip
            return None
        by_source[name] = rows
    sample = balanced_sample(by_source, SOURCE_CLASSIFIER_ROWS, random.Random(seed))
    pooled = {
        name: score_examples(model, tokenizer, rows, task, max_length=max_length, normalization=normalization,
                             batch_size=batch_size, progress=progress, desc=f"sources {name}").pooled
        for name, rows in sample.items()
    }  # fmt: skip
    classifier = fit_source_classifier(pooled)
    temperatures = fit_source_temperatures(classifier, {n: scored[n] for n in names}, votes=votes)
    log.info(
        "%s calibrated per source: %s",
        task,
        ", ".join(f"{n} T={t:.2f}" for n, t in zip(names, temperatures, strict=True)),
    )
    return temperatures, classifier


def _check_shared_temperatures(
    logits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    metrics: dict[str, dict[str, Any]],
    temperatures: dict[str, float],
    per_source: set[str] | frozenset[str] = frozenset(),
    *,
    votes: dict[str, Vote | None] | None = None,
) -> None:
    """A head may serve several datasets. Where it does, record the temperature each dataset alone would get and
    the dev ECE it would reach with it (``temperature_alone``, ``ece_alone``; through the head's kNN vote where it
    has one), and warn when the head's calibration (its one temperature, or for the tasks in ``per_source`` its
    temperatures per source) leaves a dataset's dev ECE above CALIBRATION_ECE_WARN. The warning gives both ECEs:
    far apart, sharing is the cause (the head's confidences mean different things on different kinds of text);
    close, the dataset is hard to calibrate by a temperature at all, or its dev set is too small to tell."""
    for task, temperature in temperatures.items():
        names = [n for n in logits if DATASETS[n].task == task]
        if len(names) < 2:
            continue
        how = (
            "calibration (temperatures per source)"
            if task in per_source
            else f"calibration (one temperature, {temperature:.2f}, fitted on {' + '.join(sorted(names))} together)"
        )
        for name in names:
            lg, lb = logits[name]
            vote = (votes or {}).get(name)
            alone = fit_temperature(lg, lb, vote=vote)
            probs = torch.softmax(lg.float() / alone, -1)
            metrics[name]["temperature_alone"] = alone
            metrics[name]["ece_alone"] = ece(probs if vote is None else mix_vote(probs, *vote), lb)
            if metrics[name]["ece"] > CALIBRATION_ECE_WARN:
                log.warning(
                    "%s: the head's %s leaves %s at dev ECE %.3f; its own temperature (%.2f) would give %.3f.",
                    task,
                    how,
                    name,
                    metrics[name]["ece"],
                    alone,
                    metrics[name]["ece_alone"],
                )


def _gate_view(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keys = ["n", "accuracy", "macro_f1", "ece", "ece_uncalibrated", "nll", "temperature"]
    keys += ["accuracy_ci95", "macro_f1_ci95"]
    keys += ["temperature_alone", "ece_alone"]  # datasets of a shared head only
    keys += ["source_accuracy"]  # datasets of a head calibrated per source
    keys += ["knn_weight"]  # datasets of a head with a kNN vote
    return {name: {k: m[k] for k in keys if k in m} for name, m in metrics.items()}


def new_version(fingerprint: str) -> str:
    return f"m-{datetime.now(tz=UTC):%Y%m%d-%H%M%S}-{fingerprint[:6]}"


def run_pipeline(
    settings: FinetuneSettings,
    db: Database,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool = True,
    max_steps: int | None = None,
    trigger: str = "manual",
) -> dict[str, Any]:
    """Train, evaluate and gate one candidate; returns a JSON-able summary. Raises AlreadyRunningError if a run
    is in progress and TrainingAbortedError if stopped (nothing registered in either case)."""
    eff = settings.effective()
    seed_data = eff.require_seed_data()
    started = time.monotonic()
    with run_lock(eff.data_dir):
        with db.session() as session:
            labels_seen = count_labels(session)
        run_id = _start_run_row(db, labels_seen, {"trigger": trigger, "quick": eff.quick})
        version: str | None = None
        bundle_root: Path | None = None
        registered = False
        try:
            with db.session() as session:
                champion = get_champion(session)
                data = load_training_data(
                    seed_data,
                    session=session if eff.include_db_labels else None,
                    max_train_per_task=eff.max_train_per_task,
                    max_dev_per_dataset=eff.max_dev_per_dataset,
                    seed=eff.seed,
                )
            champ_specs = _champion_specs(champion.artifact_path) if champion is not None else None
            label_changes = check_label_sets(data.specs, champ_specs, allow_new_label_set=eff.allow_new_label_set)
            voting = knn_heads(eff, data.specs)
            result = train(eff, data, should_stop=should_stop, progress=progress, max_steps=max_steps)
            run_specs = data.specs
            if voting:
                run_specs = attach_memories(
                    result.model, result.tokenizer, data.specs, data.train, heads=voting, settings=eff,
                    device=result.device, progress=progress,
                )  # fmt: skip
            cand_pred: Predictions = {}
            specs, dev_metrics = evaluate_on_dev(
                result.model, result.tokenizer, run_specs, data.dev,
                max_length=eff.max_length, normalization=eff.text_normalization, batch_size=eff.eval_batch_size,
                calibrate=True, calibration=eff.calibration, train_rows=data.train, seed=eff.seed,
                progress=progress, predictions=cand_pred,
            )  # fmt: skip
            temperatures: dict[str, Any] = {
                task: dict(zip(s.sources, s.source_temperatures, strict=True)) if s.sources else s.temperature
                for task, s in specs.items()
            }
            version = new_version(data.fingerprint)
            bundle_root = eff.models_dir / version
            base_model = str(eff.resolved_base_model())
            config = {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in eff.model_dump().items()
                if k
                in {
                    "quick", "epochs", "batch_size", "lr", "head_lr", "weight_decay", "layer_lr_decay", "warmup_ratio",
                    "max_length",
                    "text_normalization", "max_train_per_task", "max_dev_per_dataset", "freeze_embeddings",
                    "freeze_layers",
                    "task_sampling_temperature", "task_weight_multipliers", "dropout", "label_smoothing",
                    "ambiguous_label_smoothing", "seed",
                    "include_db_labels", "ema_decay", "ema_start", "calibration", "knn_weight", "knn_k",
                    "knn_temperature", "knn_tasks",
                }
            }  # fmt: skip
            config.update(
                {
                    "steps": result.steps,
                    "planned_steps": result.planned_steps,
                    "train_seconds": round(result.seconds, 1),
                    "device": str(result.device),
                    "precision": result.precision,
                    "ema_steps": result.ema_steps,
                    "threads": torch.get_num_threads(),
                    "label_sets": {t: list(s.labels) for t, s in specs.items()},
                    "train_rows": {t: len(r) for t, r in data.train.items()},
                    "step_shares": result.step_shares,
                }
            )
            manifest = BundleManifest(
                version=version,
                base_model=base_model,
                tasks=specs,
                max_length=eff.max_length,
                text_normalization=eff.text_normalization,
                extra={"data_fingerprint": data.fingerprint, "config": config},
            )
            digest = save_bundle(result.model, result.tokenizer, manifest, bundle_root / "bundle")
            if should_stop():
                raise TrainingAbortedError("stopped before registering the candidate")

            # the champion, re-scored on exactly the same dev rows
            champion_dev: dict[str, dict[str, Any]] | None = None
            paired: dict[str, Any] | None = None
            champion_note = None
            if champion is not None:
                try:
                    champ = load_bundle(Path(champion.artifact_path), expected_sha256=champion.artifact_sha256)
                    comparable = {
                        t: s for t, s in champ.manifest.tasks.items() if t in specs and s.labels == specs[t].labels
                    }
                    dev_rows = {n: r for n, r in data.dev.items() if DATASETS[n].task in comparable}
                    champ_pred: Predictions = {}
                    _, champ_metrics = evaluate_on_dev(
                        champ.model, champ.tokenizer, comparable, dev_rows,
                        max_length=champ.manifest.max_length, normalization=champ.manifest.text_normalization,
                        batch_size=eff.eval_batch_size, calibrate=False,
                        progress=progress, desc="champion dev", predictions=champ_pred,
                    )  # fmt: skip
                    champion_dev = _gate_view(champ_metrics)
                    paired = paired_summary(
                        champ_pred, cand_pred, {n: len(specs[DATASETS[n].task].labels) for n in champ_pred}
                    )
                    del champ
                except ArtifactError as exc:
                    champion_note = f"champion {champion.version} cannot be loaded ({exc}); gated on sanity only"
                    log.error(champion_note)

            cand_dev = _gate_view(dev_metrics)
            decision = decide(
                cand_dev,
                champion_dev,
                tolerance=eff.gate_tolerance,
                min_improvement=eff.gate_min_improvement,
                min_macro_f1=eff.gate_min_macro_f1,
                better_share=paired["overall"]["candidate_better_share"] if paired else None,
                min_confidence=eff.gate_min_confidence,
            )
            gate_record: dict[str, Any] = {**decision.to_json(), "champion": champion.version if champion else None}
            if paired is not None:
                gate_record["paired"] = {"champion": champion.version if champion else None, **paired}
            metrics = {"dev": cand_dev, "overall": summarize(cand_dev), "gate": gate_record}
            if champion_dev is not None:
                metrics["champion_dev"] = champion_dev
            with db.session() as session:
                reg.register_candidate(
                    session,
                    version=version,
                    base_model=base_model,
                    data_fingerprint=data.fingerprint,
                    config=config,
                    metrics=metrics,
                    artifact_path=str(bundle_root / "bundle"),
                    artifact_sha256=digest,
                    actor=eff.actor,
                    notes=champion_note,
                )
                registered = True
                if decision.accepted:
                    reg.promote(session, version, actor=eff.actor, detail={"gate": decision.to_json()})
                    status = "champion"
                else:
                    reg.reject(session, version, actor=eff.actor, reasons=decision.reasons)
                    status = "rejected"
            out_dir = reports_dir(eff.models_dir, version)
            for name, m in dev_metrics.items():
                write_report(out_dir, f"{name}-dev", {"dataset": name, "split": "dev", "model_version": version, **m},
                             list(specs[DATASETS[name].task].labels))  # fmt: skip
            summary: dict[str, Any] = {
                "version": version,
                "status": status,
                "promoted": decision.accepted,
                "gate": gate_record,
                "previous_champion": champion.version if champion else None,
                "artifact_path": str(bundle_root / "bundle"),
                "artifact_sha256": digest,
                "data_fingerprint": data.fingerprint,
                "dev": {
                    n: {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
                    for n, m in cand_dev.items()
                },
                "temperatures": temperatures,
                "label_set_changes": label_changes,
                "data": data.summary(),
                "steps": result.steps,
                "planned_steps": result.planned_steps,
                "train_seconds": round(result.seconds, 1),
                "total_seconds": round(time.monotonic() - started, 1),
                "reports": str(out_dir),
            }
            _finish_run_row(db, run_id, "succeeded", version, {"status": status, "gate": decision.to_json()})
            return summary
        except BaseException as exc:
            _finish_run_row(db, run_id, "failed", version if registered else None, {"error": repr(exc)[:2000]})
            if bundle_root is not None and not registered and bundle_root.exists():
                shutil.rmtree(bundle_root, ignore_errors=True)
            raise

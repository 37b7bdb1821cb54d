"""Training data: the seed datasets (train/dev) and the analysts' labels from the SQL store.

Every dataset feeds one task of the multi-task model::

    financial_phrasebank  -> news_sentiment
    fin_tweets_sentiment  -> news_sentiment   (bearish -> negative, bullish -> positive)
    fin_tweets_topic      -> news_topic       (20 topics)
    cs_sentiment          -> cs_sentiment
    banking77             -> cs_topic         (77 intents)

Bad rows are data, not crashes: empty or malformed rows are skipped and counted, labels outside a task's label
set are counted by name, and all of it is reported in the run summary.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from riskstream.modeling import SENTIMENT_LABELS, TASKS, TaskSpec
from schemas.db import LabelRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    label_map: dict[str, str] = field(default_factory=dict)
    # a subdirectory holding the rows every annotator agreed on (its splits subsets of the main ones): the other
    # rows of the dataset are marked ambiguous (``Example.ambiguous``) for ``--ambiguous-label-smoothing``
    unanimous_subset: str | None = None


DATASETS: dict[str, DatasetSpec] = {
    "financial_phrasebank": DatasetSpec("financial_phrasebank", "news_sentiment", unanimous_subset="allagree"),
    "fin_tweets_sentiment": DatasetSpec(
        "fin_tweets_sentiment", "news_sentiment", {"bearish": "negative", "bullish": "positive"}
    ),
    "fin_tweets_topic": DatasetSpec("fin_tweets_topic", "news_topic"),
    "cs_sentiment": DatasetSpec("cs_sentiment", "cs_sentiment"),
    "banking77": DatasetSpec("banking77", "cs_topic"),
}
# where a topic task's label set comes from (sentiment tasks use SENTIMENT_LABELS)
TOPIC_LABEL_SOURCE: dict[str, str] = {"news_topic": "fin_tweets_topic", "cs_topic": "banking77"}


class DataError(ValueError):
    """Training data that cannot be used (missing files, no rows, a refused label-set change)."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    source: str  # dataset name or "analyst"
    # the annotators did not all agree on this label (known only for datasets with a unanimous subset)
    ambiguous: bool = False


@dataclass
class ReadStats:
    """What happened to the rows of one file."""

    rows: int = 0
    used: int = 0
    empty: int = 0
    malformed: int = 0
    unknown_labels: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "used": self.used,
            "empty": self.empty,
            "malformed": self.malformed,
            "unknown_labels": dict(self.unknown_labels),
        }


def read_split(path: Path, label_map: dict[str, str] | None = None) -> tuple[list[tuple[str, str]], ReadStats]:
    """Read a ``text,label`` CSV (CRLF, RFC 4180 quoting). Returns (text, mapped label) pairs and the counts.

    A row is *empty* when its text or label is blank and *malformed* when it does not have exactly two fields or
    the CSV parser rejects it; both are skipped and counted. Labels keep the dataset's spelling (the contract
    names banking77's official intents unchanged, e.g. ``Refund_not_showing_up``); ``label_map`` keys match
    case-insensitively. Whether a label belongs to the task is checked by the caller.
    """
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    label_map = label_map or {}
    stats = ReadStats()
    pairs: list[tuple[str, str]] = []
    with path.open("r", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration as exc:
            raise DataError(f"{path} is empty") from exc
        except csv.Error as exc:
            raise DataError(f"{path}: unreadable header: {exc}") from exc
        cols = [h.strip().lower() for h in header]
        if "text" not in cols or "label" not in cols:
            raise DataError(f"{path}: header must contain text,label (got {header})")
        ti, li = cols.index("text"), cols.index("label")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error:
                stats.rows += 1
                stats.malformed += 1
                continue
            stats.rows += 1
            if len(row) != len(cols):
                stats.malformed += 1
                continue
            text, label = row[ti].strip(), row[li].strip()
            if not text or not label:
                stats.empty += 1
                continue
            pairs.append((text, label_map.get(label.lower(), label)))
    return pairs, stats


def label_set(task: str, seed_data: Path) -> tuple[str, ...]:
    """The labels of a task's head: sentiment is fixed; a topic head takes the labels of its source dataset."""
    kind = TASKS[task][1]
    if kind == "sentiment":
        return SENTIMENT_LABELS
    source = DATASETS[TOPIC_LABEL_SOURCE[task]]
    pairs, _ = read_split(seed_data / source.name / "train.csv", source.label_map)
    return tuple(sorted({label for _, label in pairs}))


@dataclass
class TrainingData:
    specs: dict[str, TaskSpec]
    train: dict[str, list[Example]]  # task -> examples
    dev: dict[str, list[Example]]  # dataset -> examples (labels are indices into the dataset's task labels)
    stats: dict[str, dict[str, Any]]  # "<dataset>/<split>" or "analyst/<task>" -> counts
    fingerprint: str

    def summary(self) -> dict[str, Any]:
        return {
            "train_rows": {task: len(rows) for task, rows in self.train.items()},
            "dev_rows": {ds: len(rows) for ds, rows in self.dev.items()},
            "stats": self.stats,
            "fingerprint": self.fingerprint,
        }


def _to_examples(
    pairs: Iterable[tuple[str, str]], labels: Sequence[str], source: str, stats: ReadStats
) -> list[Example]:
    index = {label: i for i, label in enumerate(labels)}
    out: list[Example] = []
    for text, label in pairs:
        i = index.get(label)
        if i is None:
            stats.unknown_labels[label] += 1
            continue
        out.append(Example(text, i, source))
    stats.used = len(out)
    return out


def mark_ambiguous(seed_data: Path, ds: DatasetSpec, examples: list[Example], split: str) -> tuple[list[Example], bool]:
    """(``examples`` of ``split`` with those outside the dataset's unanimous subset marked ambiguous, whether the
    dataset has that subset for this split); unchanged when it has not (no subset, or its file missing: logged)."""
    if ds.unanimous_subset is None:
        return examples, False
    path = seed_data / ds.name / ds.unanimous_subset / f"{split}.csv"
    if not path.is_file():
        log.info("%s: no %s, so no row is marked ambiguous", ds.name, path)
        return examples, False
    unanimous = {text for text, _ in read_split(path, ds.label_map)[0]}
    return [ex if ex.text in unanimous else replace(ex, ambiguous=True) for ex in examples], True


def analyst_labels(session: Session) -> dict[str, list[tuple[str, str]]]:
    """The analysts' labels per task: the latest label of each (document, task); blank rows skipped."""
    latest: dict[tuple[str, str], tuple[str, str]] = {}
    rows = session.scalars(select(LabelRow).order_by(LabelRow.labeled_at, LabelRow.id)).all()
    for row in rows:
        latest[(row.task, row.doc_id)] = ((row.text or "").strip(), (row.label or "").strip())
    out: dict[str, list[tuple[str, str]]] = {}
    for (task, _doc), pair in latest.items():
        out.setdefault(task, []).append(pair)
    return out


def count_labels(session: Session) -> int:
    from sqlalchemy import func

    return int(session.scalar(select(func.count()).select_from(LabelRow)) or 0)


def fingerprint(train: dict[str, list[Example]], dev: dict[str, list[Example]], specs: dict[str, TaskSpec]) -> str:
    """sha256 over the label sets and every (split, task/dataset, text, label) row used, in a stable order."""
    digest = hashlib.sha256()
    for task in sorted(specs):
        digest.update(f"labels\0{task}\0{'|'.join(specs[task].labels)}\n".encode())
    for split, groups in (("train", train), ("dev", dev)):
        for key in sorted(groups):
            for ex in sorted(groups[key], key=lambda e: (e.text, e.label)):
                digest.update(f"{split}\0{key}\0{ex.label}\0{ex.text}\n".encode())
    return digest.hexdigest()


def load_training_data(
    seed_data: Path,
    *,
    session: Session | None = None,
    max_train_per_task: int | None = None,
    max_dev_per_dataset: int | None = None,
    seed: int = 42,
    datasets: Sequence[str] | None = None,
) -> TrainingData:
    """Train rows per task (seed train splits + analyst labels) and dev rows per dataset (seed dev splits)."""
    rng = random.Random(seed)
    names = list(datasets) if datasets is not None else list(DATASETS)
    unknown_ds = [n for n in names if n not in DATASETS]
    if unknown_ds:
        raise DataError(f"unknown dataset(s) {unknown_ds}; known: {sorted(DATASETS)}")
    tasks = sorted({DATASETS[n].task for n in names})
    specs: dict[str, TaskSpec] = {}
    for task in tasks:
        channel, kind = TASKS[task]
        specs[task] = TaskSpec(task, channel, kind, label_set(task, seed_data))
    train: dict[str, list[Example]] = {task: [] for task in tasks}
    dev: dict[str, list[Example]] = {}
    stats: dict[str, dict[str, Any]] = {}
    for name in names:
        ds = DATASETS[name]
        labels = specs[ds.task].labels
        for split in ("train", "dev"):
            pairs, st = read_split(seed_data / name / f"{split}.csv", ds.label_map)
            examples = _to_examples(pairs, labels, name, st)
            if st.unknown_labels:
                log.warning("%s/%s: skipped rows with unknown labels %s", name, split, dict(st.unknown_labels))
            if st.empty or st.malformed:
                log.warning("%s/%s: skipped %d empty and %d malformed rows", name, split, st.empty, st.malformed)
            stats[f"{name}/{split}"] = st.to_json()
            if split == "train":
                examples, marked = mark_ambiguous(seed_data, ds, examples, split)
                if marked:
                    stats[f"{name}/{split}"]["ambiguous"] = sum(ex.ambiguous for ex in examples)
                train[ds.task].extend(examples)
            else:
                if max_dev_per_dataset is not None and len(examples) > max_dev_per_dataset:
                    examples = rng.sample(examples, max_dev_per_dataset)
                dev[name] = examples
    if session is not None:
        for task, pairs in sorted(analyst_labels(session).items()):
            st = ReadStats(rows=len(pairs))
            if task not in specs:
                log.warning("analyst labels for unknown task %r ignored (%d rows)", task, len(pairs))
                st.unknown_labels[f"task:{task}"] = len(pairs)
                stats[f"analyst/{task}"] = st.to_json()
                continue
            good = [(t, lab) for t, lab in pairs if t and lab]
            st.empty = len(pairs) - len(good)
            examples = _to_examples(good, specs[task].labels, "analyst", st)
            if st.unknown_labels:
                log.warning("analyst labels for %s: unknown labels %s", task, dict(st.unknown_labels))
            stats[f"analyst/{task}"] = st.to_json()
            train[task].extend(examples)
    for task in tasks:
        rows = train[task]
        if not rows:
            raise DataError(f"no usable training rows for task {task}")
        if max_train_per_task is not None and len(rows) > max_train_per_task:
            train[task] = rng.sample(rows, max_train_per_task)
    return TrainingData(specs=specs, train=train, dev=dev, stats=stats, fingerprint=fingerprint(train, dev, specs))


def check_label_sets(
    new: dict[str, TaskSpec], champion: dict[str, TaskSpec] | None, *, allow_new_label_set: bool
) -> list[str]:
    """Differences between the new heads' label sets and the champion's; raises unless explicitly allowed."""
    if champion is None:
        return []
    problems: list[str] = []
    for task, spec in sorted(new.items()):
        old = champion.get(task)
        if old is None:
            continue
        if tuple(old.labels) != tuple(spec.labels):
            added = sorted(set(spec.labels) - set(old.labels))
            removed = sorted(set(old.labels) - set(spec.labels))
            detail = f"added {added}, removed {removed}" if added or removed else "same labels in another order"
            problems.append(f"{task}: label set differs from the champion's head ({detail})")
    if problems and not allow_new_label_set:
        raise DataError(
            "refusing to train: " + "; ".join(problems) + ". Pass --allow-new-label-set "
            "(RISKSTREAM_ALLOW_NEW_LABEL_SET=1) if the taxonomy change is intended."
        )
    return problems


def read_eval_split(
    seed_data: Path, dataset: str, split: str, labels: Sequence[str]
) -> tuple[list[Example], ReadStats]:
    """One split of one dataset as examples against a head's labels (for `riskstream eval`), the rows annotators
    disputed marked where the dataset says which."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(DATASETS))}")
    ds = DATASETS[dataset]
    pairs, st = read_split(seed_data / dataset / f"{split}.csv", ds.label_map)
    return mark_ambiguous(seed_data, ds, _to_examples(pairs, labels, dataset, st), split)[0], st

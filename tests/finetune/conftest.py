"""Fixtures of the fine-tune tests: a small slice of the seed data, a tiny real bundle, a real SQLite store."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from riskstream.db import Database

REPO = Path(__file__).resolve().parents[2]
SPLIT_ROWS_PER_LABEL = {"train": 3, "dev": 2, "test": 2}


def seed_root() -> Path:
    env = os.environ.get("RISKSTREAM_SEED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)  # CRLF like the seed data
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def write_slice(out: Path, rows_per_label: dict[str, dict[str, int]] | None = None) -> Path:
    """The first rows of each label of every dataset and split (every label present, so heads keep their label
    sets): SPLIT_ROWS_PER_LABEL, or ``rows_per_label[dataset][split]`` where given."""
    src = seed_root()
    if not (src / "banking77" / "train.csv").is_file():
        pytest.fail(f"seed data not found at {src}: set RISKSTREAM_SEED_DATA")
    for ds in ("financial_phrasebank", "fin_tweets_sentiment", "fin_tweets_topic", "cs_sentiment", "banking77"):
        for split, default in SPLIT_ROWS_PER_LABEL.items():
            per_label = (rows_per_label or {}).get(ds, {}).get(split, default)
            with (src / ds / f"{split}.csv").open(encoding="utf-8", newline="") as fh:
                taken: dict[str, int] = defaultdict(int)
                rows: list[tuple[str, str]] = []
                for row in csv.DictReader(fh):
                    if taken[row["label"]] < per_label:
                        taken[row["label"]] += 1
                        rows.append((row["text"], row["label"]))
            write_csv(out / ds / f"{split}.csv", rows)
            subset = src / ds / "allagree" / f"{split}.csv"
            if subset.is_file():  # the slice's rows every annotator agreed on, as the seed data ships them
                with subset.open(encoding="utf-8", newline="") as fh:
                    agreed = {row["text"] for row in csv.DictReader(fh)}
                write_csv(out / ds / "allagree" / f"{split}.csv", [r for r in rows if r[0] in agreed])
    return out


@pytest.fixture(scope="session")
def seed_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few rows per label of every dataset and split."""
    return write_slice(tmp_path_factory.mktemp("seed"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, seed_slice: Path) -> tuple[Path, str]:
    """One tiny trained bundle (a few steps), shared read-only by the session: copy it before changing it."""
    from finetune.testing import tiny_bundle

    return tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle", seed_data=seed_slice, steps=3)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'riskstream.db'}")
    yield database
    database.dispose()

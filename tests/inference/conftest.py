"""Fixtures of the inference tests: small real bundles built from the packaged base encoder (never the hub)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from riskstream.modeling import (
    SENTIMENT_LABELS,
    BundleManifest,
    TaskSpec,
    build_untrained,
    default_base_model,
    save_bundle,
)

TOPICS_NEWS = tuple(f"news-topic-{i}" for i in range(20))
TOPICS_CS = tuple(f"intent-{i}" for i in range(12))


def _tasks() -> dict[str, TaskSpec]:
    return {
        "news_sentiment": TaskSpec("news_sentiment", "news", "sentiment", SENTIMENT_LABELS, 1.0),
        "news_topic": TaskSpec("news_topic", "news", "topic", TOPICS_NEWS, 1.3),
        "cs_sentiment": TaskSpec("cs_sentiment", "customer_service", "sentiment", SENTIMENT_LABELS, 0.9),
        "cs_topic": TaskSpec("cs_topic", "customer_service", "topic", TOPICS_CS, 1.0),
    }


def make_bundle(path: Path, version: str, seed: int = 0, text_normalization: str = "none") -> str:
    """An untrained bundle whose heads are scaled up so predictions are confident and differ by seed."""
    torch.manual_seed(seed)
    model, tokenizer = build_untrained(default_base_model(), _tasks())
    with torch.no_grad():
        for head in model.heads.parameters():
            head.mul_(8.0)
    return save_bundle(
        model,
        tokenizer,
        BundleManifest(
            version=version,
            base_model="all-MiniLM-L6-v2",
            tasks=_tasks(),
            max_length=128,
            text_normalization=text_normalization,
        ),
        path,
    )


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], tuple[Path, str]]:
    cache: dict[tuple[str, int], tuple[Path, str]] = {}

    def factory(version: str, seed: int = 0) -> tuple[Path, str]:
        if (version, seed) not in cache:
            path = tmp_path_factory.mktemp("bundles") / version
            cache[(version, seed)] = (path, make_bundle(path, version, seed))
        return cache[(version, seed)]

    return factory


@pytest.fixture(scope="session")
def bundle_v1(bundle_factory: Callable[[str, int], tuple[Path, str]]) -> tuple[Path, str]:
    return bundle_factory("test-v1", 1)

"""How texts are prepared for the model: the "reader" normalization, and bundles recording which one they need."""

from __future__ import annotations

import pytest

from riskstream.modeling import (
    TEXT_NORMALIZATIONS,
    ArtifactError,
    BundleManifest,
    TaskSpec,
    normalize_text,
    normalize_texts,
)

TASKS = {"news_sentiment": TaskSpec("news_sentiment", "news", "sentiment", ("negative", "neutral", "positive"))}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$ACME up 5% https://t.co/aB3dE9fGh1", "$ACME up 5% t.co"),
        ("Read http://WWW.Reuters.com/markets/rates?id=42 now", "Read reuters.com now"),
        ("two links https://t.co/x1 https://t.co/y2", "two links t.co t.co"),
        ("AT&amp;T &lt;3 earnings", "AT&T <3 earnings"),
        # credentials in a link are dropped with its path
        ("login at https://anna:s3cret@bank.example:8443/reset?token=abc", "login at bank.example"),
        ("no link here, just www-like text", "no link here, just www-like text"),
        ("", ""),
    ],
)
def test_reader_keeps_what_a_reader_sees(text: str, expected: str) -> None:
    assert normalize_text(text, "reader") == expected


def test_none_passes_the_text_through_untouched() -> None:
    text = "AT&amp;T https://t.co/aB3dE9fGh1"
    assert normalize_text(text, "none") == text
    assert normalize_texts([text], "none") == [text]


def test_unknown_normalization_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown text normalization 'lower'"):
        normalize_text("x", "lower")


def test_manifest_records_the_normalization_and_old_bundles_read_raw_text() -> None:
    manifest = BundleManifest(version="v2", base_model="m", tasks=TASKS, text_normalization="reader")
    data = manifest.to_json()
    assert BundleManifest.from_json(data).text_normalization == "reader"
    del data["text_normalization"]  # written before the field existed
    assert BundleManifest.from_json(data).text_normalization == "none"


def test_a_bundle_needing_an_unknown_normalization_is_refused() -> None:
    data = BundleManifest(version="v9", base_model="m", tasks=TASKS).to_json()
    data["text_normalization"] = "reader-v7"
    with pytest.raises(ArtifactError, match=r"prepares its texts with 'reader-v7'.*upgrade riskstream"):
        BundleManifest.from_json(data)


def test_the_setting_offers_exactly_the_normalizations_a_bundle_may_name() -> None:
    """finetune's settings spell the choices out (importing the model module there would load torch at start-up)."""
    from typing import get_args

    from finetune.settings import FinetuneSettings

    assert get_args(FinetuneSettings.model_fields["text_normalization"].annotation) == TEXT_NORMALIZATIONS

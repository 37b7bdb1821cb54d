"""The configuration reference in docs/ is generated from the settings classes and must be current."""

from __future__ import annotations

from pathlib import Path

from riskstream.settings_doc import SETTINGS_CLASSES, _load, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_process_has_a_settings_class() -> None:
    missing = [target for target in SETTINGS_CLASSES.values() if _load(target) is None]
    assert not missing, f"settings classes not importable: {missing}"


def test_configuration_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run `.venv/bin/riskstream config --markdown > docs/configuration.md`"
    )

"""JSON Schema exported from the records, for producers that are not written in Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.records import Alert, DeadLetter, Label, ModelVersionRecord, RawDocument, ScoredDocument

EXPORTED: dict[str, type[BaseModel]] = {
    "raw_document": RawDocument,
    "scored_document": ScoredDocument,
    "dead_letter": DeadLetter,
    "alert": Alert,
    "label": Label,
    "model_version": ModelVersionRecord,
}


def schema_for(name: str) -> dict[str, Any]:
    model = EXPORTED[name]
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://riskstream.invalid/schemas/{name}.json"
    if model is RawDocument:
        # Producers may send fields the contract does not name: they are kept under metadata, not refused.
        schema["additionalProperties"] = True
    return schema


def export_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in EXPORTED:
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema_for(name), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written

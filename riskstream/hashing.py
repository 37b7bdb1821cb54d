"""File checksums shared by model bundles, ONNX exports, fetched artifacts and ingested files (standard library
only, so the launcher and ingest can use it without importing torch)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (flat memory for multi-GB artifacts)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

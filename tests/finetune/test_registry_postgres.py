"""The registry's write side on PostgreSQL (the shared-deployment store): promote, refuse, roll back, audit."""

from __future__ import annotations

from typing import Any

import pytest

from finetune import registry as reg
from riskstream.db import Database
from riskstream.registry import get_champion, list_versions

pytestmark = [pytest.mark.postgres, pytest.mark.services, pytest.mark.slow]


def test_promote_and_rollback_on_postgres(pg_url: str, tiny: Any) -> None:
    path, digest = tiny
    db = Database(pg_url)
    try:
        with db.session() as session:
            for version in ("m-a", "m-b"):
                reg.register_candidate(
                    session, version=version, base_model="tiny", data_fingerprint="f", config={},
                    metrics={"dev": {"x": {"macro_f1": 0.5}}}, artifact_path=str(path), artifact_sha256=digest,
                    actor="test",
                )  # fmt: skip
            assert reg.promote(session, "m-a", actor="ann") is None
            assert reg.promote(session, "m-b", actor="bob") == "m-a"
            with pytest.raises(reg.RegistryError, match="already registered"):
                reg.register_candidate(
                    session, version="m-a", base_model="tiny", data_fingerprint="f", config={}, metrics={},
                    artifact_path=str(path), artifact_sha256=digest, actor="test",
                )  # fmt: skip
            assert reg.rollback(session, actor="carol") == ("m-a", "m-b")
            champ = get_champion(session)
            assert champ is not None and (champ.version, champ.promoted_by) == ("m-a", "carol")
            assert {v.version: v.status for v in list_versions(session)} == {"m-a": "champion", "m-b": "retired"}
            with pytest.raises(reg.RegistryError, match="no previous champion"):
                reg.rollback(session, actor="carol")
            actions = [(e.version, e.action, e.actor) for e in reg.events(session)]
        assert actions == [
            ("m-a", "register", "test"),
            ("m-b", "register", "test"),
            ("m-a", "promote", "ann"),
            ("m-b", "promote", "bob"),
            ("m-a", "rollback", "carol"),
        ]
    finally:
        db.dispose()

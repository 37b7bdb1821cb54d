"""`riskstream alerts rules ...` and `alerts test-rule` through the real CLI (SQLite store; ES for test-rule)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from riskstream.cli import main
from riskstream.es import make_client
from riskstream.settings import CommonSettings
from schemas.es import ensure_templates, index_for
from tests.alerts.helpers import scored

RULES = [
    {"id": "burst", "name": "Burst", "channel": "news", "window": "15m", "threshold": 2, "group_by": ["entity"]},
    {"id": "share", "name": "Share", "metric": "negative_share", "threshold": 0.5, "min_docs": 2},
]


def test_rules_add_list_disable(tmp_path: Path) -> None:
    runner = CliRunner()
    flags = ["--data-dir", str(tmp_path)]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([RULES[0], {**RULES[1], "threshold": 5}]))
    result = runner.invoke(main, ["alerts", "rules", "add", str(bad), *flags])
    assert result.exit_code == 1 and "share in [0, 1]" in result.output
    listed = json.loads(runner.invoke(main, ["alerts", "rules", "list", *flags]).output)
    assert listed["rules"] == []  # an invalid file stores nothing, not half of it

    good = tmp_path / "rules.json"
    good.write_text(json.dumps(RULES))
    assert runner.invoke(main, ["alerts", "rules", "add", str(good), *flags]).exit_code == 0
    assert runner.invoke(main, ["alerts", "rules", "disable", "share", *flags]).exit_code == 0
    assert runner.invoke(main, ["alerts", "rules", "disable", "nope", *flags]).exit_code == 1
    listed = json.loads(runner.invoke(main, ["alerts", "rules", "list", *flags]).output)
    assert {r["id"]: r["enabled"] for r in listed["rules"]} == {"burst": True, "share": False}


@pytest.mark.services
def test_test_rule_dry_run_on_indexed_documents(settings: CommonSettings, tmp_path: Path) -> None:
    es = make_client(settings)
    ensure_templates(es, settings.es_docs_alias, settings.es_alerts_alias)
    start = datetime.now(tz=UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    docs = [scored(f"d{i}", start + timedelta(minutes=i)) for i in range(3)]
    docs.append(scored("old", start - timedelta(days=3)))
    docs.append(scored("beta", start, entities=("$BETA",)))
    for d in docs:
        es.index(index=index_for(settings.es_docs_alias, d.ingested_at), id=d.id, document=d.model_dump(mode="json"))
    es.indices.refresh(index=settings.es_docs_alias)
    es.close()
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(RULES[0]))
    flags = ["--es-url", settings.es_url, "--es-docs-alias", settings.es_docs_alias, "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(main, ["alerts", "test-rule", str(path), "--since", "6h", *flags])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)  # progress goes to stderr
    assert report["documents"] == 4  # the 3-day-old one is outside --since
    assert [(a["group"], a["doc_count"]) for a in report["alerts"]] == [({"entity": "$ACME"}, 3)]

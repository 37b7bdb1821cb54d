"""``riskstream alerts``: run the engine, dry-run a rule against indexed documents, manage rules."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from alerts.settings import AlertSettings
from riskstream.cliutil import echo_json, with_settings

log = logging.getLogger(__name__)


@click.group("alerts")
def alerts() -> None:
    """The alert engine (faust) and rule tools."""


@alerts.command("run")
@with_settings(AlertSettings)
def run_cmd(settings: AlertSettings) -> None:
    """Run the alert engine until interrupted (consumes the scored topic, fires alerts, sends webhooks)."""
    from alerts.engine import run

    run(settings)


def _read_rules(path: Path) -> list[Any]:
    from alerts.rules import RuleError, load_rules_file

    try:
        return load_rules_file(path)
    except (RuleError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def scan_docs(settings: AlertSettings, since: datetime, channel: str | None, limit: int) -> Iterator[Any]:
    """Scored documents from the docs alias with event time after ``since`` (invalid ones are skipped)."""
    from elasticsearch.helpers import scan
    from pydantic import ValidationError

    from riskstream.es import make_client
    from schemas.records import ScoredDocument

    client = make_client(settings)
    must: list[dict[str, Any]] = [
        {
            "bool": {
                "should": [
                    {"range": {"published_at": {"gte": since.isoformat()}}},
                    {"range": {"ingested_at": {"gte": since.isoformat()}}},
                ],
                "minimum_should_match": 1,
            }
        }
    ]
    if channel:
        must.append({"term": {"channel": channel}})
    query = {"query": {"bool": {"filter": must}}}
    try:
        for n, hit in enumerate(
            scan(client, index=settings.es_docs_alias, query=query, size=500, ignore_unavailable=True)
        ):
            if n >= limit:
                break
            try:
                yield ScoredDocument.model_validate(hit["_source"])
            except ValidationError as exc:
                log.warning("skipping document %s: %s", hit.get("_id"), exc.errors()[0]["msg"])
    finally:
        client.close()


@alerts.command("test-rule")
@click.argument("rule_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--since", default="24h", show_default=True, help="How far back to read documents (e.g. 6h, 7d).")
@click.option("--limit", default=200_000, show_default=True, help="At most this many documents.")
@with_settings(AlertSettings)
def test_rule(rule_file: Path, since: str, limit: int, settings: AlertSettings) -> None:
    """Dry run: which windows of RULE_FILE's rules would fire on the indexed documents (nothing is sent)."""
    from alerts.rules import dry_run
    from alerts.windows import parse_duration

    try:
        back = parse_duration(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    start = datetime.now(tz=UTC) - back
    out = []
    from tqdm import tqdm

    for rule in _read_rules(rule_file):
        docs = list(
            tqdm(scan_docs(settings, start, rule.channel, limit), desc=f"{rule.id}: documents", unit="doc", leave=False)
        )
        fired = dry_run(rule, docs)
        out.append(
            {
                "rule": rule.id,
                "documents": len(docs),
                "would_fire": len(fired),
                "alerts": [
                    {
                        "id": a.id,
                        "window_start": a.window_start.isoformat(),
                        "window_end": a.window_end.isoformat(),
                        "group": a.group,
                        "value": round(a.value, 4),
                        "doc_count": a.doc_count,
                        "message": a.message,
                    }
                    for a in fired
                ],
            }
        )
    echo_json(out)


@alerts.group("rules")
def rules_group() -> None:
    """List, add, enable and disable rules in the SQL store."""


def _db(settings: AlertSettings) -> Any:
    from riskstream.db import Database

    return Database(settings.db_url)


@rules_group.command("list")
@with_settings(AlertSettings)
def rules_list(settings: AlertSettings) -> None:
    """Print every stored rule (disabled ones too) as JSON."""
    from alerts import store

    db = _db(settings)
    with db.session() as session:
        rules, errors = store.load_rules(session, include_disabled=True)
    echo_json({"rules": [r.model_dump(mode="json") for r in rules], "invalid": errors})
    db.dispose()


@rules_group.command("add")
@click.argument("rule_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--actor", default="cli", show_default=True, help="Recorded as the rule's creator.")
@with_settings(AlertSettings)
def rules_add(rule_file: Path, actor: str, settings: AlertSettings) -> None:
    """Validate the rules in RULE_FILE (JSON or YAML) and store them (replacing rules with the same id)."""
    from alerts import store

    rules = _read_rules(rule_file)
    db = _db(settings)
    with db.session() as session:
        for rule in rules:
            store.save_rule(session, rule, actor=actor)
        session.commit()
    db.dispose()
    click.echo(f"stored {len(rules)} rule(s): {', '.join(r.id for r in rules)}")


def _toggle(settings: AlertSettings, rule_id: str, enabled: bool) -> None:
    from alerts import store

    db = _db(settings)
    with db.session() as session:
        found = store.set_enabled(session, rule_id, enabled)
        session.commit()
    db.dispose()
    if not found:
        raise click.ClickException(f"no rule {rule_id!r}")
    click.echo(f"rule {rule_id} {'enabled' if enabled else 'disabled'}")


@rules_group.command("disable")
@click.argument("rule_id")
@with_settings(AlertSettings)
def rules_disable(rule_id: str, settings: AlertSettings) -> None:
    """Stop evaluating RULE_ID (the engine picks it up at its next rule refresh)."""
    _toggle(settings, rule_id, False)


@rules_group.command("enable")
@click.argument("rule_id")
@with_settings(AlertSettings)
def rules_enable(rule_id: str, settings: AlertSettings) -> None:
    """Evaluate RULE_ID again."""
    _toggle(settings, rule_id, True)

"""Small administrative commands: show configuration, migrate the SQL store, export schemas, manage users."""

from __future__ import annotations

from pathlib import Path

import click

from riskstream.cliutil import echo_json, with_settings
from riskstream.settings import CommonSettings


@click.command("config")
@click.option("--markdown", is_flag=True, help="Print the reference of every process's settings instead.")
@with_settings(CommonSettings)
def config_cmd(markdown: bool, settings: CommonSettings) -> None:
    """Print the effective configuration (secrets masked)."""
    if markdown:
        from riskstream.settings_doc import render

        click.echo(render(), nl=False)
        return
    echo_json(settings.safe_dump())


@click.group("db")
def db_group() -> None:
    """The SQL store: migrations and users."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_settings(CommonSettings)
def db_upgrade(revision: str, settings: CommonSettings) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from riskstream import db

    db.upgrade(settings.db_url, revision)
    click.echo(f"database at revision {revision}")


@db_group.command("downgrade")
@click.option("--revision", default="base", show_default=True)
@with_settings(CommonSettings)
def db_downgrade(revision: str, settings: CommonSettings) -> None:
    """Revert migrations down to REVISION (default: an empty database)."""
    from riskstream import db

    db.downgrade(settings.db_url, revision)
    click.echo(f"database at revision {revision}")


@db_group.command("current")
@with_settings(CommonSettings)
def db_current(settings: CommonSettings) -> None:
    """Show the applied and the newest migration."""
    from riskstream import db
    from schemas.db import make_engine

    engine = make_engine(settings.db_url)
    echo_json({"current": db.current_revision(engine), "head": db.head_revision(settings.db_url)})
    engine.dispose()


@click.group("schemas")
def schemas_group() -> None:
    """The message contracts as JSON Schema and the Elasticsearch templates."""


@schemas_group.command("export")
@click.argument("directory", type=click.Path(path_type=Path), default=Path("schemas/json"))
def schemas_export(directory: Path) -> None:
    """Write one JSON Schema file per record into DIRECTORY."""
    from schemas.jsonschema import export_all

    for path in export_all(directory):
        click.echo(str(path))


@schemas_group.command("apply-es")
@with_settings(CommonSettings)
def schemas_apply_es(settings: CommonSettings) -> None:
    """Install the Elasticsearch index templates and aliases (idempotent)."""
    from riskstream.es import make_client
    from schemas.es import ensure_templates

    client = make_client(settings)
    ensure_templates(client, settings.es_docs_alias, settings.es_alerts_alias)
    click.echo(f"templates and aliases ready: {settings.es_docs_alias}, {settings.es_alerts_alias}")


@schemas_group.command("apply-kafka")
@with_settings(CommonSettings)
def schemas_apply_kafka(settings: CommonSettings) -> None:
    """Create the Kafka topics that are missing (kafka_topic_partitions, kafka_topic_replication); idempotent."""
    from schemas.topics import TopicSetupError, ensure_configured

    try:
        topics = ensure_configured(settings, settings.kafka_topics)
    except TopicSetupError as exc:
        raise click.ClickException(str(exc)) from exc
    for t in topics:
        click.echo(f"{t.name}  {t.partitions} partitions  {'created' if t.created else 'existed'}")

"""``riskstream services up|down|status``: the local Kafka, Elasticsearch and PostgreSQL."""

from __future__ import annotations

import logging
import sys

import click

from launcher.base import ServiceError
from launcher.settings import LauncherSettings
from launcher.stack import ServiceStatus, Stack
from riskstream.cliutil import echo_json, with_settings

log = logging.getLogger(__name__)


def _print_table(results: list[ServiceStatus]) -> None:
    for r in results:
        health = "healthy" if r.healthy else "down"
        version = r.version or "-"
        click.echo(f"{r.name:<14} {r.address:<26} {health:<8} {version:<10} {r.action}")
        if r.pid:
            click.echo(f"{'':<14} pid {r.pid}, log {r.log}")
        if r.detail and not r.healthy:
            click.echo(f"{'':<14} {r.detail}")


def _names(only: tuple[str, ...]) -> list[str] | None:
    return list(only) if only else None


def apply_schemas(settings: LauncherSettings, names: list[str]) -> list[str]:
    """Apply the SQL migrations, (with Kafka up) the topics and (with Elasticsearch up) the index templates.

    Idempotent: existing topics, migrations and templates are left as they are.
    """
    from riskstream.db import upgrade

    done = []
    upgrade(settings.db_url)
    done.append("sql migrations at head")
    if "kafka" in names:
        from schemas.topics import ensure_configured

        topics = ensure_configured(settings, settings.kafka_topics)
        done.append("kafka topics " + ", ".join(f"{t.name} ({t.partitions} partitions)" for t in topics))
    if "elasticsearch" in names:
        from riskstream.es import make_client
        from schemas.es import ensure_templates

        client = make_client(settings)
        try:
            ensure_templates(client, settings.es_docs_alias, settings.es_alerts_alias)
        finally:
            client.close()
        done.append(f"index templates {settings.es_docs_alias}, {settings.es_alerts_alias}")
    return done


@click.group("services")
def services() -> None:
    """Start, stop and inspect the local Kafka, Elasticsearch and PostgreSQL (loopback only)."""


ONLY = click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(["kafka", "elasticsearch", "postgres"]),
    help="Act on this service only (repeatable). Default: the configured services.",
)
JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")


@services.command("up")
@ONLY
@JSON
@with_settings(LauncherSettings)
def up(settings: LauncherSettings, only: tuple[str, ...], as_json: bool) -> None:
    """Start the services on the addresses the settings name; wait until healthy. Idempotent."""
    stack = Stack(settings)
    names = _names(only) or settings.wanted_services()
    try:
        results = stack.up(names)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc
    applied: list[str] = []
    if settings.apply_schemas:
        try:
            applied = apply_schemas(settings, names)
        except Exception as exc:
            raise click.ClickException(
                f"services are up, but applying the schemas failed: {exc}\n"
                "  fix: check RISKSTREAM_DATABASE_URL / RISKSTREAM_ES_URL, then rerun `riskstream services up`"
            ) from exc
    if as_json:
        echo_json(
            {
                "data_dir": str(settings.data_dir),
                "services": {r.name: r.to_dict() for r in results},
                "schemas": applied,
            }
        )
    else:
        _print_table(results)
        for line in applied:
            click.echo(f"applied: {line}")


@services.command("down")
@ONLY
@JSON
@click.option("--purge", is_flag=True, help="Also delete the services' data (topics, indices, databases).")
@with_settings(LauncherSettings)
def down(settings: LauncherSettings, only: tuple[str, ...], as_json: bool, purge: bool) -> None:
    """Stop the services this launcher started in this data dir (gracefully, then SIGKILL)."""
    results = Stack(settings).down(_names(only), purge=purge)
    if as_json:
        echo_json({"data_dir": str(settings.data_dir), "services": {r.name: r.to_dict() for r in results}})
    else:
        if not results:
            click.echo("nothing to stop")
        _print_table(results)


@services.command("status")
@ONLY
@JSON
@with_settings(LauncherSettings)
def status(settings: LauncherSettings, only: tuple[str, ...], as_json: bool) -> None:
    """Health and version of each service at its address (also ones this launcher did not start).

    Exits 0 when every reported service is healthy, 3 otherwise.
    """
    results = Stack(settings).status(_names(only))
    if as_json:
        echo_json(
            {
                "data_dir": str(settings.data_dir),
                "healthy": all(r.healthy for r in results),
                "services": {r.name: r.to_dict() for r in results},
            }
        )
    else:
        _print_table(results)
    if not all(r.healthy for r in results):
        sys.exit(3)

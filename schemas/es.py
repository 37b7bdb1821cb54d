"""Elasticsearch layout: composable index templates, aliases and index naming.

Documents live in monthly concrete indices (``riskstream-docs-2026.11``) behind the alias ``riskstream-docs``.
The month comes from the document itself (``ingested_at``, which the worker fills from the Kafka record
timestamp when the edge did not), never from the time of the write, so a redelivered document overwrites
itself instead of landing twice. Mappings are explicit and ``dynamic: strict``: a field the contract does not
name is refused at write time instead of silently growing the mapping. Free-form objects (``metadata``,
``probs``, ``kafka``) are stored but not indexed.

The integ-test distribution used on single machines has no ILM, data streams or ingest pipelines, so none are
used; retention is by deleting old monthly indices (``riskstream db``-independent, see docs/operations.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

TEMPLATE_VERSION = 1

_KEYWORD = {"type": "keyword", "ignore_above": 512}
_DATE = {"type": "date"}


def _prediction_mapping() -> dict[str, Any]:
    return {
        "properties": {
            "label": {"type": "keyword"},
            "score": {"type": "float"},
            "margin": {"type": "float"},
            "probs": {"type": "object", "enabled": False},
        }
    }


# Text fields use the built-in ``standard`` analyzer: the integ-test distribution has no analysis-common module,
# so language analyzers (``english``) make the template invalid there.


def docs_mappings() -> dict[str, Any]:
    return {
        "dynamic": "strict",
        "_meta": {"template_version": TEMPLATE_VERSION, "owner": "riskstream"},
        "properties": {
            "schema_version": {"type": "integer"},
            "id": _KEYWORD,
            "channel": {"type": "keyword"},
            "source": _KEYWORD,
            "text": {"type": "text", "analyzer": "standard"},
            "title": {"type": "text", "analyzer": "standard", "fields": {"raw": _KEYWORD}},
            "url": {"type": "keyword", "ignore_above": 4000},
            "published_at": _DATE,
            "ingested_at": _DATE,
            "scored_at": _DATE,
            "language": {"type": "keyword"},
            "entities": {
                "type": "nested",
                "properties": {"type": {"type": "keyword"}, "value": _KEYWORD, "text": _KEYWORD},
            },
            "story_id": _KEYWORD,
            "is_novel": {"type": "boolean"},
            "redactions": {"type": "object", "enabled": False},
            "metadata": {"type": "object", "enabled": False},
            "sentiment": _prediction_mapping(),
            "topic": _prediction_mapping(),
            "model_version": {"type": "keyword"},
            "risk_score": {"type": "float"},
            "uncertainty": {"type": "float"},
            "kafka": {"type": "object", "enabled": False},
        },
    }


def alerts_mappings() -> dict[str, Any]:
    return {
        "dynamic": "strict",
        "_meta": {"template_version": TEMPLATE_VERSION, "owner": "riskstream"},
        "properties": {
            "schema_version": {"type": "integer"},
            "id": _KEYWORD,
            "rule_id": _KEYWORD,
            "rule_name": {"type": "text", "fields": {"raw": _KEYWORD}},
            "severity": {"type": "keyword"},
            "channel": {"type": "keyword"},
            "window_start": _DATE,
            "window_end": _DATE,
            "fired_at": _DATE,
            "value": {"type": "float"},
            "threshold": {"type": "float"},
            "doc_count": {"type": "integer"},
            "group": {"type": "object", "enabled": False},
            "sample_doc_ids": _KEYWORD,
            "message": {"type": "text"},
        },
    }


def index_template(alias: str, mappings: dict[str, Any], *, shards: int = 1, replicas: int = 0) -> dict[str, Any]:
    """A composable index template body for ``<alias>-*`` indices, joined to ``alias``."""
    return {
        "index_patterns": [f"{alias}-*"],
        "priority": 200,
        "version": TEMPLATE_VERSION,
        "_meta": {"owner": "riskstream"},
        "template": {
            "settings": {
                "number_of_shards": shards,
                "number_of_replicas": replicas,
                "refresh_interval": "1s",
            },
            "mappings": mappings,
            "aliases": {alias: {}},
        },
    }


def month_suffix(when: datetime) -> str:
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return f"{when.year:04d}.{when.month:02d}"


def index_for(alias: str, when: datetime) -> str:
    """The concrete index a document belongs to, derived from the document's own time."""
    return f"{alias}-{month_suffix(when)}"


class IndexLayoutError(RuntimeError):
    """An index in riskstream's naming scheme that does not follow its layout (no alias: created by a write that
    came before the index template)."""


def ensure_templates(client: Any, docs_alias: str, alerts_alias: str, *, replicas: int = 0) -> None:
    """Install (or update) both index templates and make sure each alias has at least one index.

    ``client`` is an ``elasticsearch.Elasticsearch``. Idempotent; safe to call at every start (and from several
    processes at once).

    Call it before anything writes: a write to ``<alias>-<month>`` before the template exists auto-creates that
    index without the alias (and with dynamic mappings). Such an index is reported (:class:`IndexLayoutError`),
    not patched over, since its mappings are not the contract's.
    """
    for alias, mappings in ((docs_alias, docs_mappings()), (alerts_alias, alerts_mappings())):
        client.indices.put_index_template(name=alias, **index_template(alias, mappings, replicas=replicas))
        current = index_for(alias, datetime.now(tz=UTC))
        if client.indices.exists_alias(name=alias):
            continue
        # 400 = it exists already: created by a concurrent start (then the template gave it the alias) or by a
        # write that came before the template (then it has no alias, checked below)
        client.options(ignore_status=400).indices.create(index=current)
        if not client.indices.exists_alias(name=alias):
            raise IndexLayoutError(
                f"Elasticsearch index {current} exists without the alias {alias}: something wrote to it before "
                f"the index template was installed, so its mappings are not riskstream's. Reindex its documents "
                f"into a new index created after `riskstream schemas apply-es` (or delete it if they are disposable), "
                f"then start again."
            )

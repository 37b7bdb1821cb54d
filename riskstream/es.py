"""Elasticsearch client construction from settings (one place, so auth and timeouts are consistent)."""

from __future__ import annotations

from typing import Any

from riskstream.settings import CommonSettings


def make_client(settings: CommonSettings, **kwargs: Any) -> Any:
    from elasticsearch import Elasticsearch

    options: dict[str, Any] = {"request_timeout": 30, "retry_on_timeout": True, "max_retries": 3}
    if settings.es_api_key is not None:
        options["api_key"] = settings.es_api_key.get_secret_value()
    options.update(kwargs)
    return Elasticsearch(settings.es_url, **options)

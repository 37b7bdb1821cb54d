"""Typed configuration.

Every process builds exactly one settings object at start-up (in the CLI) and passes it down; nothing reads
``os.environ`` deep in the code. Each setting is an environment variable with the prefix ``RISKSTREAM_`` and a CLI
flag of the same name (``RISKSTREAM_KAFKA_BOOTSTRAP`` is ``--kafka-bootstrap``); the flag wins over the variable.

Services subclass :class:`CommonSettings` with their own fields (``WorkerSettings`` in ``inference``,
``IngestSettings`` in ``ingest`` and so on), so a process only sees the knobs that concern it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from riskstream.errors import SettingsError

ENV_PREFIX = "RISKSTREAM_"


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "riskstream"


class CommonSettings(BaseSettings):
    """Settings every riskstream process shares: where the engines are and what the contracts are called."""

    # hide_input_in_errors: a rejected value is never echoed back (it may be a URL with credentials in it)
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where riskstream keeps its state: the SQLite store, model artifacts, service data and logs.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Where fetched artifacts (Kafka jars, Elasticsearch zip) are cached; shared by every data dir. "
        "Default: ~/.cache/riskstream.",
    )
    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092",
        description="Kafka bootstrap servers, comma separated. `services up` starts a broker on this address.",
    )
    kafka_topic_partitions: int = Field(
        default=3,
        ge=1,
        description="Partitions of a topic riskstream creates (at `services up`, `schemas apply-kafka` and when a "
        "worker or the alert engine starts and finds its topic missing). The raw topic's count caps how many "
        "workers share the load. Existing topics are never changed.",
    )
    kafka_topic_replication: int = Field(
        default=1,
        ge=1,
        description="Replication factor of a topic riskstream creates; 3 on a production cluster.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every riskstream Kafka client talks to the brokers: PLAINTEXT (the local broker), SSL "
        "(TLS), SASL_SSL (TLS and a username/password: the usual production cluster) or SASL_PLAINTEXT.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL mechanism for the SASL_* protocols."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL username (SASL_* protocols).")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password (SASL_* protocols).")
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA that signed the brokers' certificates (SSL and SASL_SSL); default: the "
        "system's trust store. Broker host names are always verified.",
    )
    es_url: str = Field(
        default="http://127.0.0.1:9200",
        description="Elasticsearch URL. `services up` starts a node on this address.",
    )
    es_api_key: SecretStr | None = Field(default=None, description="Elasticsearch API key (production clusters).")
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the SQL store (labels, users, rules, model registry). "
        "Default: a SQLite file under the data dir; PostgreSQL for shared deployments.",
    )
    seed_data: Path | None = Field(
        default=None,
        description="Folder of <dataset>/{train,dev,test}.csv seed datasets (read, never copied into the project).",
    )
    topic_raw: str = Field(default="riskstream.docs.raw", description="Kafka topic of raw documents.")
    topic_scored: str = Field(default="riskstream.docs.scored", description="Kafka topic of scored documents.")
    topic_dlq: str = Field(default="riskstream.docs.dlq", description="Kafka dead-letter topic.")
    topic_alerts: str = Field(default="riskstream.alerts", description="Kafka topic of fired alerts.")
    es_docs_alias: str = Field(default="riskstream-docs", description="Elasticsearch alias of scored documents.")
    es_alerts_alias: str = Field(default="riskstream-alerts", description="Elasticsearch alias of alerts.")
    log_level: str = Field(default="INFO", description="Log level (DEBUG, INFO, WARNING, ERROR).")
    log_json: bool = Field(default=False, description="Log one JSON object per line (for log shippers).")
    log_level_libraries: str = Field(
        default="WARNING",
        description="Log level of the chatty client libraries (kafka, aiokafka, faust, mode, elastic_transport, "
        "urllib3, httpx, alembic); never below log_level. DEBUG here shows consumer-group, rebalance and table "
        "recovery detail when diagnosing the stream jobs.",
    )

    @field_validator("log_level", "log_level_libraries", mode="after")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"unknown log level {value!r} (DEBUG, INFO, WARNING, ERROR or CRITICAL)")
        return level

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> CommonSettings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"kafka_security_protocol {self.kafka_security_protocol} needs kafka_sasl_username and "
                "kafka_sasl_password (RISKSTREAM_KAFKA_SASL_USERNAME / RISKSTREAM_KAFKA_SASL_PASSWORD)"
            )
        return self

    @field_validator("data_dir", "seed_data", "cache_dir", "kafka_ssl_cafile", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("es_url", mode="after")
    @classmethod
    def _es_url_is_http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http(s) URL of an Elasticsearch node or load balancer, e.g. http://127.0.0.1:9200"
            )
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_url_has_a_known_dialect(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value.get_secret_value()).get_dialect()
        except ArgumentError as exc:  # the message names the scheme, never the password
            example = "postgresql+psycopg://user:***@host/db"
            raise ValueError(f"not a usable SQLAlchemy URL ({exc}); e.g. {example}") from None
        return value

    # ---- derived values -------------------------------------------------------------------------------------

    @property
    def db_url(self) -> str:
        """The database URL to connect with (secret: never log it, use :meth:`safe_dump`)."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'riskstream.db'}"

    @property
    def kafka_topics(self) -> list[str]:
        """Every topic of the contract: raw, scored, dead-letter and alerts."""
        return [self.topic_raw, self.topic_scored, self.topic_dlq, self.topic_alerts]

    @property
    def artifact_cache(self) -> Path:
        return self.cache_dir or Path.home() / ".cache" / "riskstream"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def require_seed_data(self) -> Path:
        if self.seed_data is None:
            raise SettingsError(
                "no seed data configured: set RISKSTREAM_SEED_DATA (or --seed-data) to a folder of "
                "<dataset>/{train,dev,test}.csv"
            )
        if not self.seed_data.is_dir():
            raise SettingsError(f"RISKSTREAM_SEED_DATA={self.seed_data} is not a directory")
        return self.seed_data

    def to_env(self) -> dict[str, str]:
        """These settings as ``RISKSTREAM_*`` variables, to give a child process the same configuration.

        The result contains secrets in clear: pass it to a child's environment, never log it.
        """
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, list | tuple | set | dict):
                text = json.dumps(sorted(value) if isinstance(value, set) else value, default=str)
            else:
                text = str(value)
            env[f"{ENV_PREFIX}{name.upper()}"] = text
        return env

    def safe_dump(self) -> dict[str, Any]:
        """All settings as plain values with secrets masked, for logs and `riskstream config`."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = "**********"
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        out["db_url"] = mask_url(self.db_url)
        return out


def mask_url(url: str) -> str:
    """Hide the password of a database URL: postgresql://u:secret@h/db -> postgresql://u:***@h/db."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"

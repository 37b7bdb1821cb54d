"""Settings of the local service launcher (``riskstream services``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from riskstream.settings import CommonSettings

KNOWN_SERVICES: tuple[str, ...] = ("kafka", "elasticsearch", "postgres")


class LauncherSettings(CommonSettings):
    """Where and how `riskstream services up` runs Kafka, Elasticsearch and PostgreSQL on this machine."""

    services: str = Field(
        default="kafka,elasticsearch",
        description="Comma-separated services to manage (kafka, elasticsearch, postgres). PostgreSQL is added "
        "automatically when the database URL is postgresql; fewer services start faster and use less memory.",
    )
    with_postgres: bool = Field(
        default=False,
        description="Also start PostgreSQL (on the database URL's port when it is postgresql, else "
        "--postgres-port). Costs ~50 MB of RAM; SQLite needs no server.",
    )
    kafka_version: str = Field(
        default="3.9.1",
        description="Apache Kafka version fetched from Maven Central. 3.9.x keeps the old protocol versions that "
        "kafka-python and aiokafka still use; 4.x removed them (KIP-896).",
    )
    es_version: str = Field(
        default="8.19.7",
        description="Elasticsearch version (integ-test-zip from Maven Central). Must match the 8.x client.",
    )
    kafka_heap: str = Field(
        default="512m",
        description="Kafka JVM heap (-Xms = -Xmx). More absorbs bigger batches; less leaves RAM for models.",
    )
    kafka_sasl_port: int | None = Field(
        default=None,
        description="Also open a SASL_PLAINTEXT listener (mechanism PLAIN) on this loopback port, accepting the "
        "user kafka_sasl_username with kafka_sasl_password: for trying the secured-cluster settings against the "
        "local broker (tests do). The client listener on kafka_bootstrap stays PLAINTEXT.",
    )
    es_heap: str = Field(
        default="512m",
        description="Elasticsearch JVM heap (-Xms = -Xmx, pinned). 512m holds a dev corpus; raise it for "
        "millions of documents at the cost of RAM for everything else.",
    )
    postgres_port: int = Field(
        default=5433,
        description="PostgreSQL port when the database URL is not a postgresql URL (5433 avoids a system "
        "server on 5432).",
    )
    java_home: Path | None = Field(
        default=None,
        description="JDK (17+) used for Kafka and Elasticsearch. Default: /usr/lib/jvm/java-17-openjdk-amd64 "
        "when present, else the `java` on PATH.",
    )
    maven: str = Field(
        default="mvn",
        description="Maven executable used to fetch the Kafka jars and the Elasticsearch zip (only when they are "
        "not cached yet).",
    )
    postgres_bin_dir: Path | None = Field(
        default=None,
        description="Directory of the PostgreSQL server binaries (initdb, postgres). Default: the newest "
        "/usr/lib/postgresql/*/bin.",
    )
    service_user: str = Field(
        default="riskstream",
        description="System user that runs Elasticsearch and PostgreSQL when the launcher runs as root (both "
        "refuse root). Created on first use.",
    )
    start_timeout: float = Field(
        default=180.0,
        description="Seconds to wait for each service to become healthy. Elasticsearch needs 20-60 s on two "
        "busy cores; a short value fails fast on a slow machine.",
    )
    stop_timeout: float = Field(
        default=30.0,
        description="Seconds to wait for a graceful stop before SIGKILL. Longer lets Kafka and Elasticsearch "
        "flush; shorter stops faster.",
    )
    apply_schemas: bool = Field(
        default=True,
        description="After `up`, apply the SQL migrations and the Elasticsearch index templates (idempotent).",
    )

    @field_validator("services", mode="after")
    @classmethod
    def _known_services(cls, value: str) -> str:
        names = [s.strip() for s in value.split(",") if s.strip()]
        unknown = sorted(set(names) - set(KNOWN_SERVICES))
        if unknown:
            raise ValueError(f"unknown service(s) {unknown}; choose from {list(KNOWN_SERVICES)}")
        return ",".join(names)

    def wanted_services(self) -> list[str]:
        """The services `up` starts, in start order."""
        names = set(self.services.split(",")) if self.services else set()
        if self.with_postgres or self.db_url.startswith("postgresql"):
            names.add("postgres")
        return [s for s in KNOWN_SERVICES if s in names]

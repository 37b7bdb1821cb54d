"""A single-node Apache Kafka broker in KRaft mode (broker and controller in one JVM), run from Maven jars.

Version 3.9.x on purpose: Kafka 4.0 removed the old protocol versions (KIP-896) that kafka-python and
faust-streaming's aiokafka still negotiate for some requests; 3.9 serves both (see docs/services.md).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any

from launcher.artifacts import kafka_libs
from launcher.base import (
    LOOPBACK_HOSTS,
    Health,
    ProcessRecord,
    Service,
    ServiceError,
    free_port,
    is_listening,
    port_is_free,
    require_loopback,
    run_checked,
    spawn,
    split_host_port,
)
from launcher.jvm import java_home
from launcher.settings import LauncherSettings

log = logging.getLogger(__name__)

LOG4J = """\
# Kafka (reload4j) logging: INFO to stdout, which the launcher appends to kafka.log.
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.controller=INFO
log4j.logger.org.apache.kafka.raft=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.authorizer.logger=WARN
"""


def kafka_cluster_id() -> str:
    """A random cluster id in Kafka's format (URL-safe base64 of 16 bytes, unpadded)."""
    while True:  # like Kafka's Uuid.randomUuid: never starting with "-" (it would read as a CLI flag)
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


def probe_kafka(bootstrap: str, timeout: float = 2.0) -> Health:
    """Healthy when the broker answers ApiVersions and a metadata request (via kafka-python)."""
    host, port = split_host_port(bootstrap, 9092)
    if not is_listening(port, host):
        return Health(False, detail=f"nothing listens on {host}:{port}")
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError, KafkaError

    ms = int(timeout * 1000)
    options: dict[str, Any] = {"client_id": "riskstream-launcher-probe", "request_timeout_ms": max(ms, 1000)}
    # kafka-python 3.x bounds the version probe with bootstrap_timeout_ms, 2.x with api_version_auto_timeout_ms
    for key in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms"):
        if key in KafkaAdminClient.DEFAULT_CONFIG:
            options[key] = ms
    admin: Any = None
    try:
        admin = KafkaAdminClient(bootstrap_servers=f"{host}:{port}", **options)
        cluster = admin.describe_cluster()
        version = getattr(getattr(admin, "_manager", None), "broker_version", None)
    except KafkaConfigurationError:
        raise
    except (KafkaError, OSError, ValueError) as exc:
        return Health(False, listening=True, detail=f"{host}:{port} does not answer as a Kafka broker: {exc!r}")
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()
    brokers = len(cluster.get("brokers", []))
    protocol = ".".join(str(v) for v in version) if version else None
    return Health(
        True,
        version=protocol,
        listening=True,
        detail=f"cluster {cluster.get('cluster_id')} with {brokers} broker(s); protocol ~{protocol}",
    )


class KafkaService(Service):
    name = "kafka"

    def __init__(self, settings: LauncherSettings, root: Path, previous: dict[str, Any]) -> None:
        self.settings = settings
        self.host, self.port = split_host_port(settings.kafka_bootstrap, 9092)
        self.root = root
        self.data = root / "data"
        self.config = root / "server.properties"
        self.log = root / "kafka.log"
        self.cluster_id: str = previous.get("cluster_id") or kafka_cluster_id()
        prev_ctrl = previous.get("controller_port")
        if self.host not in LOOPBACK_HOSTS:
            self.controller_port = 0  # refused in prepare(); status still probes the address
        elif isinstance(prev_ctrl, int) and prev_ctrl != self.port and port_is_free(prev_ctrl, self.host):
            self.controller_port = prev_ctrl
        else:
            self.controller_port = free_port(self.host, avoid={self.port})
        self._java: Path | None = None
        self._libs: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def ports(self) -> dict[str, int]:
        ports = {"client": self.port, "controller": self.controller_port}
        if self.settings.kafka_sasl_port:
            ports["sasl"] = self.settings.kafka_sasl_port
        return ports

    def probe(self, timeout: float = 2.0) -> Health:
        return probe_kafka(self.address, timeout)

    def _sasl_properties(self) -> dict[str, str]:
        """The optional SASL_PLAINTEXT listener's settings: PLAIN, one user (the configured SASL credentials)."""
        user, password = self.settings.kafka_sasl_username, self.settings.kafka_sasl_password
        if not user or password is None:
            raise ServiceError(
                self.name,
                "kafka_sasl_port is set but kafka_sasl_username / kafka_sasl_password are not",
                "set RISKSTREAM_KAFKA_SASL_USERNAME and RISKSTREAM_KAFKA_SASL_PASSWORD, or unset kafka_sasl_port",
            )
        secret = password.get_secret_value()
        # server.properties unescapes backslashes and JAAS ends a value at a quote: keep both out
        if not user.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ServiceError(self.name, f"SASL user name {user!r} is not [A-Za-z0-9._-]+", "choose a simpler name")
        if any(c in secret for c in '"\\\n\r'):
            raise ServiceError(
                self.name, "the SASL password contains a quote, backslash or line break", "choose another password"
            )
        jaas = f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{user}="{secret}";'
        return {
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
        }

    def properties(self) -> dict[str, str]:
        listener = f"PLAINTEXT://{self.host}:{self.port}"
        protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        extra: dict[str, str] = {}
        if self.settings.kafka_sasl_port:
            listener += f",SASL_PLAINTEXT://{self.host}:{self.settings.kafka_sasl_port}"
            protocols += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            extra = self._sasl_properties()
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"{listener},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": listener,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": protocols,
            **extra,
            "log.dirs": str(self.data),
            # one node: every internal topic has a single replica
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # 3 partitions so a consumer group of several workers shares a topic
            "num.partitions": "3",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
            "log.segment.bytes": str(256 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
        }

    def prepare(self) -> None:
        require_loopback(self.name, self.host, "RISKSTREAM_KAFKA_BOOTSTRAP")
        self._java = java_home(self.settings.java_home, self.name) / "bin" / "java"
        self._libs = kafka_libs(self.settings.artifact_cache, self.settings.kafka_version, self.settings.maven)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={v}" for k, v in self.properties().items()]
        self.config.touch(mode=0o600)  # it may hold the SASL listener's password
        self.config.chmod(0o600)
        self.config.write_text("# written by riskstream services up\n" + "\n".join(lines) + "\n", encoding="utf-8")
        (self.root / "log4j.properties").write_text(LOG4J, encoding="utf-8")
        if not (self.data / "meta.properties").exists():
            run_checked(
                self.name,
                [
                    str(self._java),
                    "-Xmx256m",
                    f"-Dlog4j.configuration=file:{self.root / 'log4j.properties'}",
                    "-cp",
                    f"{self._libs}/*",
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={self.cluster_id}",
                    f"--config={self.config}",
                    "--ignore-formatted",
                ],
                cause="formatting the KRaft storage failed",
                fix=f"delete {self.data} if it holds an old broker's data, then retry",
                timeout=120,
            )
        else:
            meta = (self.data / "meta.properties").read_text(encoding="utf-8")
            for line in meta.splitlines():
                if line.startswith("cluster.id="):
                    self.cluster_id = line.split("=", 1)[1].strip()

    def start(self) -> ProcessRecord:
        if self._java is None or self._libs is None:
            raise ServiceError(self.name, "start() before prepare()", "call prepare() first")
        heap = self.settings.kafka_heap
        argv = [
            str(self._java),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.root / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.root}",
            "-cp",
            f"{self._libs}/*",
            "kafka.Kafka",
            str(self.config),
        ]
        return spawn(argv, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, log=self.log, cwd=self.root)

    def extra_state(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "controller_port": self.controller_port,
            "version": self.settings.kafka_version,
            "data": str(self.data),
        }

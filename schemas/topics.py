"""The Kafka topics of the contract, created before any process needs them.

A broker that creates topics on first use (the local launcher's does) makes a producer's first send wait for
metadata of a topic that does not exist yet; under load that wait has stalled the alert engine's first alert.
Production clusters usually refuse automatic creation altogether. So every process that writes a topic, and
``riskstream services up`` / ``riskstream schemas apply-kafka``, creates the topics it needs first, with the
configured partition count and replication factor. A topic that already exists is left exactly as it is (its
partition count is the operator's decision and the consumer groups' assignment depends on it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAlreadyExistsError,
    for_code,
)

from riskstream.errors import UserError
from riskstream.kafka_client import RECONNECT_BACKOFF_MAX_MS, KafkaConnection, security_options

log = logging.getLogger(__name__)


# what a record batch of one record adds to its key and value on the wire: the batch header (61 bytes) and the
# record's own framing (lengths, varints), rounded up. A producer that keeps key + value + this under a topic's
# max.message.bytes never sends a record the broker refuses for its size.
RECORD_OVERHEAD_BYTES = 128

# the broker's answers for a record batch larger than its topic takes. kafka-python 3's idempotent producer treats
# them as fatal when the batch held one record: every later send of that producer fails
SIZE_REFUSALS: tuple[type[KafkaError], ...] = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)


class TopicSetupError(UserError, RuntimeError):
    """A topic the process needs is missing and cannot be created (the broker's reason is in the message)."""


class TopicSettings(KafkaConnection, Protocol):
    """What topic set-up reads from a process's settings (``riskstream.settings.CommonSettings`` has it)."""

    kafka_topic_partitions: int
    kafka_topic_replication: int


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    created: bool


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int,
    replication: int,
    timeout_s: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> list[TopicState]:
    """Create the topics of ``names`` that do not exist and wait until every partition of each has a leader.

    Returns each topic's partition count and whether this call created it. Raises :class:`TopicSetupError` with
    the broker's reason when the cluster cannot be reached or refuses the connection (``security``: the
    kafka-python options of ``riskstream.kafka_client.security_options``), when a missing topic cannot be created
    (the principal may not create topics, the replication factor exceeds the brokers) or when its partitions have
    no leader within ``timeout_s``.
    """
    wanted = list(dict.fromkeys(n for n in names if n))
    security = dict(security or {})
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","),
            client_id="riskstream-topics",
            request_timeout_ms=int(timeout_s * 1000),
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            **security,
        )
    except KafkaError as exc:  # unreachable, or refused: wrong protocol or credentials
        protocol = security.get("security_protocol", "PLAINTEXT")
        hint = (
            " Over SASL the broker refuses wrong credentials either with an authentication error in the log above "
            "(SaslAuthenticationFailedError) or by closing the connection right after the client sends them "
            "('socket disconnected' after 'Sending username and password'): which one an operator sees is a race "
            "between the broker's answer and its close, and both mean kafka_sasl_username / kafka_sasl_password / "
            "kafka_sasl_mechanism are not accepted."
            if protocol.startswith("SASL")
            else ""
        )
        raise TopicSetupError(
            f"cannot connect to Kafka at {bootstrap} over {protocol}: {exc}. Check kafka_bootstrap and the "
            "kafka_security_protocol / kafka_sasl_* / kafka_ssl_cafile settings; the client's log lines above "
            f"carry the broker's answer.{hint}"
        ) from exc
    try:
        existing = set(admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        created: set[str] = set()
        if missing:
            response = admin.create_topics(
                [NewTopic(n, num_partitions=partitions, replication_factor=replication) for n in missing],
                timeout_ms=int(timeout_s * 1000),
                raise_errors=False,  # one result per topic, with the broker's message
            )
            for result in response["topics"]:
                name, code = result["name"], result["error_code"]
                if code == TopicAlreadyExistsError.errno:  # another process created it meanwhile
                    continue
                if code:
                    raise TopicSetupError(
                        f"cannot create Kafka topic {name!r} ({partitions} partitions, replication {replication}): "
                        f"{for_code(code).__name__}: {(result.get('error_message') or '').rstrip('.')}. Create it "
                        "on the cluster, or change kafka_topic_partitions / kafka_topic_replication"
                    )
                created.add(name)
                log.info("created Kafka topic %s (%d partitions, replication %d)", name, partitions, replication)
        counts = _wait_for_leaders(admin, wanted, time.monotonic() + timeout_s)
    finally:
        admin.close()
    return [TopicState(name=n, partitions=counts[n], created=n in created) for n in wanted]


def _wait_for_leaders(admin: KafkaAdminClient, names: list[str], deadline: float) -> dict[str, int]:
    """Partition count per topic once every partition has a leader (a new topic gets them a moment later)."""
    while True:
        pending: list[str] = []
        counts: dict[str, int] = {}
        for desc in admin.describe_topics(names):
            name = desc.get("name") or desc.get("topic")
            parts = desc.get("partitions") or []
            counts[name] = len(parts)
            if desc.get("error_code") or not parts or any(p.get("leader_id", -1) < 0 for p in parts):
                pending.append(name)
        if not pending:
            return counts
        if time.monotonic() > deadline:
            raise TopicSetupError(f"Kafka topics {pending} have partitions without a leader; is the cluster healthy?")
        time.sleep(0.2)


def ensure_configured(settings: TopicSettings, names: Iterable[str]) -> list[TopicState]:
    """:func:`ensure_topics` with the bootstrap servers, partition count and replication factor of ``settings``."""
    return ensure_topics(
        settings.kafka_bootstrap,
        names,
        partitions=settings.kafka_topic_partitions,
        replication=settings.kafka_topic_replication,
        security=security_options(settings),
    )


def max_message_bytes(settings: KafkaConnection, names: Iterable[str], timeout_s: float = 30.0) -> dict[str, int]:
    """Each topic's effective ``max.message.bytes`` (its own setting, else the broker's ``message.max.bytes``): the
    largest record batch the broker takes for it. A producer that checks its records against it never sends one
    the broker refuses, which an idempotent kafka-python producer treats as fatal for every send after it."""
    from kafka.admin import ConfigResource, ConfigResourceType

    wanted = list(dict.fromkeys(n for n in names if n))
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        client_id="riskstream-topics",
        request_timeout_ms=int(timeout_s * 1000),
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        **security_options(settings),
    )
    try:
        response = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, configs=["max.message.bytes"]) for n in wanted],
            config_filter="all",
        )
    finally:
        admin.close()
    topics = response.get("topic", {})
    return {n: int(topics[n]["max.message.bytes"]["value"]) for n in wanted if "max.message.bytes" in topics.get(n, {})}

"""The settings as Kafka client options, in one place, for every kafka-python client and for faust (aiokafka).

A local broker takes PLAINTEXT; a production cluster usually wants TLS and a SASL username and password
(``kafka_security_protocol`` and friends in :class:`riskstream.settings.CommonSettings`). Every producer,
consumer and admin client riskstream opens takes its options from :func:`client_options`, and the alert engine's
faust app its credentials from :func:`faust_credentials`, so a process cannot connect one way for one topic and
another way for the next.

The returned values hold the password in clear: pass them to the client, never log them.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr


class KafkaConnection(Protocol):
    """What a Kafka client reads from a process's settings (``CommonSettings`` has it; read-only here)."""

    @property
    def kafka_bootstrap(self) -> str: ...
    @property
    def kafka_security_protocol(self) -> str: ...
    @property
    def kafka_sasl_mechanism(self) -> str: ...
    @property
    def kafka_sasl_username(self) -> str | None: ...
    @property
    def kafka_sasl_password(self) -> SecretStr | None: ...
    @property
    def kafka_ssl_cafile(self) -> Path | None: ...


def uses_tls(settings: KafkaConnection) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: KafkaConnection) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def _password(settings: KafkaConnection) -> str | None:
    password = settings.kafka_sasl_password
    return password.get_secret_value() if password is not None else None


def security_options(settings: KafkaConnection) -> dict[str, Any]:
    """kafka-python options for encryption and authentication (everything but the bootstrap servers)."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if uses_sasl(settings):
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=_password(settings),
        )
    if uses_tls(settings):
        options["ssl_check_hostname"] = True
        if settings.kafka_ssl_cafile is not None:
            options["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    return options


# kafka-python doubles its wait between connection attempts up to 30 s; the Java client stops at 1 s. Measured
# (tests/platform/test_kafka_reconnect.py; docs/operations.md, "A Kafka broker restarts"): a client started while
# the broker was unreachable for 15 s never connected within its 30 s bootstrap timeout, and after a 25 s outage
# one connected 2.8-4.6 s after the broker was back; with a 1 s ceiling, within 0.2 s.
RECONNECT_BACKOFF_MAX_MS = 1000


def client_options(settings: KafkaConnection) -> dict[str, Any]:
    """kafka-python options to reach the configured cluster: bootstrap servers, :func:`security_options`, and a
    reconnect backoff capped at :data:`RECONNECT_BACKOFF_MAX_MS`."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        **security_options(settings),
    }


def faust_credentials(settings: KafkaConnection) -> Any | None:
    """faust ``broker_credentials`` for the configured protocol (None for PLAINTEXT)."""
    import faust

    context: ssl.SSLContext | None = None
    if uses_tls(settings):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile is not None else None
        context = ssl.create_default_context(cafile=cafile)  # verifies the certificate and the host name
    if uses_sasl(settings):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=_password(settings),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def rescue_stranded_join(consumer: Any) -> bool:
    """Work around a kafka-python 3.0 bug that leaves a group member without its partitions; call after ``poll``.

    When a ``poll`` times out while the member re-joins its group, kafka-python keeps the join in flight and means
    the next ``poll`` to collect it. But when the re-join was started by the leader's own metadata check (a topic
    gained partitions, or the first metadata refresh after joining), that join also updates the leader's
    assignment snapshot, so the next ``poll`` finds nothing left to re-join and never applies the assignment the
    join brought back. The member then fetches nothing until it is restarted. Short poll timeouts make it likely:
    in a reproduction against a real broker (a consumer whose topic gains partitions, polled with 1 ms timeouts) it
    happened in 4 runs of 4 (tests/inference/test_worker_services.py covers it).

    The sign is a finished join that is still cached. Asking for a re-join makes the next ``poll`` start a fresh one
    and apply it. Returns True when it did that. Reads private attributes; on a kafka-python without them it does
    nothing.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_join_task", None)
    if coordinator is None or task is None or not getattr(task, "is_done", False):
        return False
    if coordinator.need_rejoin():
        return False  # the next poll collects it
    coordinator.request_rejoin()
    return True

"""The Kafka security settings as client options (no broker: the SASL listener test in tests/platform connects)."""

from __future__ import annotations

import json
from pathlib import Path

import certifi
import faust
import pytest
from click.testing import CliRunner
from pydantic import SecretStr, ValidationError

from riskstream.kafka_client import client_options, faust_credentials, security_options
from riskstream.settings import CommonSettings

PASSWORD = "s3cret-kafka-password"


def _settings(**values: object) -> CommonSettings:
    return CommonSettings.model_validate({"kafka_bootstrap": "b1:9093,b2:9093", **values})


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    expected = {
        "bootstrap_servers": ["b1:9093", "b2:9093"],
        "reconnect_backoff_max_ms": 1000,  # tests/platform/test_kafka_reconnect.py says why
        "security_protocol": "PLAINTEXT",
    }
    assert client_options(_settings()) == expected
    assert faust_credentials(_settings()) is None


def test_sasl_ssl_options_carry_the_credentials_and_verify_the_brokers() -> None:
    cafile = Path(certifi.where())
    s = _settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="riskstream",
        kafka_sasl_password=SecretStr(PASSWORD),
        kafka_ssl_cafile=cafile,
    )
    assert security_options(s) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "riskstream",
        "sasl_plain_password": PASSWORD,
        "ssl_check_hostname": True,
        "ssl_cafile": str(cafile),
    }
    credentials = faust_credentials(s)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context is not None and credentials.ssl_context.check_hostname
    assert PASSWORD not in repr(credentials)


def test_tls_without_sasl_gives_tls_credentials() -> None:
    s = _settings(kafka_security_protocol="SSL")
    assert security_options(s) == {"security_protocol": "SSL", "ssl_check_hostname": True}
    assert isinstance(faust_credentials(s), faust.SSLCredentials)


def test_sasl_without_credentials_is_refused_with_the_variables_to_set() -> None:
    with pytest.raises(ValidationError, match="RISKSTREAM_KAFKA_SASL_USERNAME / RISKSTREAM_KAFKA_SASL_PASSWORD"):
        _settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="riskstream")
    with pytest.raises(ValidationError):
        _settings(kafka_security_protocol="SASL_GSSAPI")


def test_the_password_is_masked_in_the_printed_configuration() -> None:
    from riskstream.cli import main

    env = {
        "RISKSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RISKSTREAM_KAFKA_SASL_USERNAME": "riskstream",
        "RISKSTREAM_KAFKA_SASL_PASSWORD": PASSWORD,
    }
    result = CliRunner().invoke(main, ["config"], env=env)
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    shown = json.loads(result.output[result.output.index("{") :])
    assert shown["kafka_security_protocol"] == "SASL_SSL" and shown["kafka_sasl_password"] == "**********"

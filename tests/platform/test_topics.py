"""Topic set-up on the real broker: missing topics are created with the configured partitions, existing ones are
left exactly as they are, and a topic the cluster cannot create is refused with the broker's reason."""

from __future__ import annotations

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from riskstream.settings import CommonSettings
from schemas.topics import TopicSetupError, ensure_topics

pytestmark = pytest.mark.services


def test_missing_topics_are_created_and_existing_ones_left_alone(settings: CommonSettings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    admin.create_topics([NewTopic(settings.topic_raw, 1, 1)])  # an operator's choice of one partition
    admin.close()

    names = [settings.topic_raw, settings.topic_scored, settings.topic_dlq]
    first = ensure_topics(settings.kafka_bootstrap, names, partitions=2, replication=1)
    assert [(t.name, t.partitions, t.created) for t in first] == [
        (settings.topic_raw, 1, False),
        (settings.topic_scored, 2, True),
        (settings.topic_dlq, 2, True),
    ]
    again = ensure_topics(settings.kafka_bootstrap, names, partitions=5, replication=1)
    assert [(t.partitions, t.created) for t in again] == [(1, False), (2, False), (2, False)]


def test_a_topic_the_cluster_cannot_create_is_refused_with_the_reason(settings: CommonSettings) -> None:
    with pytest.raises(TopicSetupError) as err:
        ensure_topics(settings.kafka_bootstrap, [settings.topic_alerts], partitions=1, replication=3)
    message = str(err.value)
    assert settings.topic_alerts in message and "replication 3" in message
    assert "InvalidReplicationFactorError: Unable to replicate" in message and "kafka_topic_replication" in message


def test_schemas_apply_kafka_creates_the_four_topics_once(settings: CommonSettings) -> None:
    from click.testing import CliRunner

    from riskstream.cli import main

    env = {**settings.to_env(), "RISKSTREAM_KAFKA_TOPIC_PARTITIONS": "2"}
    first = CliRunner().invoke(main, ["schemas", "apply-kafka"], env=env)
    assert first.exit_code == 0, first.output
    names = [settings.topic_raw, settings.topic_scored, settings.topic_dlq, settings.topic_alerts]
    assert _table(first.output) == [f"{n}  2 partitions  created" for n in names]
    second = CliRunner().invoke(main, ["schemas", "apply-kafka", "--kafka-topic-partitions", "4"], env=env)
    assert _table(second.output) == [f"{n}  2 partitions  existed" for n in names]


def _table(output: str) -> list[str]:
    return [line for line in output.splitlines() if not line[:1].isdigit()]  # log lines start with the date

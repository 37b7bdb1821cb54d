"""Against the real broker: published records read back, keyed by id, with no personal data; and the
acceptance scenario of issue 5 end to end through the CLI."""

from __future__ import annotations

import json
import os
import random
import re
import string
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from kafka.admin import KafkaAdminClient

from ingest.cli import ingest
from ingest.pipeline import Ingestor
from ingest.publisher import KafkaPublisher, PublishError
from ingest.push import create_app
from ingest.settings import IngestSettings
from riskstream.db import Database
from riskstream.settings import CommonSettings
from schemas.records import DeadLetter, RawDocument
from tests.ingest.kafka_util import consume
from tests.ingest.site import OTHER_STORY, STORY, Route, Site, article_html, rss

pytestmark = pytest.mark.services

# the personal data planted in the customer-service inputs; none of it may reach Kafka
CARD = "4539 1488 0343 6467"
IBAN = "GB82 WEST 1234 5698 7654 32"
EMAIL = "jane.doe@example.co.uk"
PHONE = "+44 20 7946 0958"
ACCOUNT = "31926819"
PLANTED = [CARD, CARD.replace(" ", ""), IBAN, IBAN.replace(" ", ""), EMAIL, PHONE, "7946 0958", ACCOUNT]
EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def ingest_settings_from(settings: CommonSettings, **overrides: Any) -> IngestSettings:
    common = {name: getattr(settings, name) for name in CommonSettings.model_fields}
    fast = {
        "per_host_interval_s": 0.0,
        "read_timeout_s": 2.0,
        "backoff_initial_s": 0.01,
        "fetch_retries": 2,
        "publish_timeout_s": 30.0,
    }
    return IngestSettings(**{**common, **fast, **overrides})


def assert_no_pii(values: list[bytes]) -> None:
    for value in values:
        text = value.decode("utf-8")
        for planted in PLANTED:
            assert planted not in text, planted
        assert not EMAIL_RE.search(text), text


def test_published_records_are_keyed_by_id_and_redacted(settings: CommonSettings) -> None:
    cfg = ingest_settings_from(settings)
    db = Database(cfg.db_url)
    publisher = KafkaPublisher(cfg)
    ingestor = Ingestor(cfg, publisher, db=db)
    client = TestClient(create_app(ingestor, token="t0ken", max_body_bytes=100_000, max_messages=100))
    try:
        response = client.post(
            "/v1/messages",
            headers={"Authorization": "Bearer t0ken"},
            json={
                "messages": [
                    {"id": "m1", "source": "crm", "text": f"my card {CARD} was cloned, write to {EMAIL}"},
                    {"id": "m2", "source": "crm", "text": f"IBAN {IBAN}, account number {ACCOUNT}, call {PHONE}"},
                    {"text": "no id, no personal data"},
                ]
            },
        )
        assert response.status_code == 202
        ids = response.json()["ids"]
        assert ids[:2] == ["crm:m1", "crm:m2"] and len(ids) == 3
    finally:
        publisher.close()
        db.dispose()
    records = consume(cfg.kafka_bootstrap, cfg.topic_raw, expected=3)
    assert sorted(r.key.decode() for r in records) == sorted(ids)  # acknowledged means readable, once each
    docs = {r.key.decode(): RawDocument.model_validate_json(r.value) for r in records}
    assert docs["crm:m1"].text == "my card [CARD] was cloned, write to [EMAIL]"
    assert docs["crm:m2"].redactions == {"IBAN": 1, "ACCOUNT": 1, "PHONE": 1}
    assert_no_pii([r.value for r in records])


def test_a_record_larger_than_the_topic_takes_comes_back_unsent_and_the_others_are_acknowledged(
    settings: CommonSettings,
) -> None:
    cfg = ingest_settings_from(settings)
    publisher = KafkaPublisher(cfg)
    ok = [RawDocument(id=f"ok-{i}", channel="news", source="t", text=f"story {i}") for i in range(3)]
    # over the producer's max_request_size (1 MiB): not sent (kafka-python would refuse it itself)
    too_big = RawDocument(id="too-big", channel="news", source="t", text="x", metadata={"blob": "x" * 1_100_000})
    try:
        (refused,) = publisher.send([ok[0], too_big, ok[1], ok[2]]).wait()
    finally:
        publisher.close()
    assert (refused.index, refused.key, refused.limit) == (1, "too-big", 1_048_576) and refused.size > 1_100_000
    records = consume(cfg.kafka_bootstrap, cfg.topic_raw, expected=3)
    assert sorted(r.key.decode() for r in records) == ["ok-0", "ok-1", "ok-2"]


@pytest.mark.parametrize("describe_configs", [True, False], ids=["describe-configs", "no-describe-configs"])
def test_a_topic_limit_lowered_under_a_running_publisher(
    settings: CommonSettings, monkeypatch: pytest.MonkeyPatch, describe_configs: bool
) -> None:
    """The operator lowers the raw topic's max.message.bytes after the publisher read it: the broker refuses a
    document that fitted before, which fails kafka-python's idempotent producer for every later send. The publisher
    settles it within the same call: a new producer, the limits read again, the batch sent again, and the document
    comes back too large and becomes a too_large dead letter cut to fit the dead-letter topic; the stream goes on.
    Without the DescribeConfigs permission (the admin call refused as a broker without the ACL would) the limits
    cannot be read: the retry goes one record at a time, so the refusal names the document and its size becomes
    the topic's limit, and the dead letter, refused in turn, is cut until the dead-letter topic takes it."""
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import TopicAuthorizationFailedError

    from schemas.topics import ensure_configured

    cfg = ingest_settings_from(settings)
    ensure_configured(cfg, [cfg.topic_raw, cfg.topic_dlq])
    if not describe_configs:

        def refused(*args: Any, **kwargs: Any) -> dict[str, int]:
            raise TopicAuthorizationFailedError("DescribeConfigs not allowed")

        monkeypatch.setattr("ingest.publisher.max_message_bytes", refused)
    db = Database(cfg.db_url)
    publisher = KafkaPublisher(cfg)
    ingestor = Ingestor(cfg, publisher, db=db)
    assert publisher.limits[cfg.topic_raw] == 1_048_576  # the producer's own cap (the broker's default is larger)

    def news(i: str, text: str) -> RawDocument:
        return RawDocument(id=i, channel="news", source="t", text=text)

    # ~6 KB that lz4 cannot shrink (the broker checks batches as compressed, the publisher records as they are)
    rnd = random.Random(7)
    mid = news("mid", "".join(rnd.choices(string.ascii_letters + string.digits + " ", k=6000)))
    try:
        assert ingestor.ingest([news("a", "first story"), news("b", "second story")]).ids == ["a", "b"]
        admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap.split(","))
        admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": limit})
                for topic, limit in ((cfg.topic_raw, "4096"), (cfg.topic_dlq, "3000"))
            ]
        )
        admin.close()
        settled = ingestor.ingest([news("c", "third story"), mid])
        assert settled.ids == ["c"] and list(settled.rejected) == ["mid"]
        if describe_configs:
            assert publisher.limits == {cfg.topic_raw: 4096, cfg.topic_dlq: 3000}  # read again, new producer
            assert "takes at most 4096" in settled.rejected["mid"]
        else:
            # learned from the refusal of the document alone: its size less one byte (the prepared document is a
            # little larger than the 6,000 characters of text)
            learned = publisher.limits[cfg.topic_raw]
            assert 6000 < learned < 7000
            assert f"cannot be read (DescribeConfigs), so it is now held to {learned} bytes" in settled.rejected["mid"]
            assert publisher.limits[cfg.topic_dlq] < 3000  # learned from the refusals of its dead letter
        assert ingestor.ingest([news("d", "fourth story"), news("e", "fifth story")]).ids == ["d", "e"]
        assert ingestor.ingest([mid]).rejected.keys() == {"mid"}  # now refused before sending, in either case
    finally:
        ingestor.close()
        publisher.close()
        db.dispose()
    records = consume(cfg.kafka_bootstrap, cfg.topic_raw, expected=5)
    assert sorted(r.key.decode() for r in records) == ["a", "b", "c", "d", "e"]
    dead = consume(cfg.kafka_bootstrap, cfg.topic_dlq, expected=2)
    for record in dead:
        letter = DeadLetter.model_validate_json(record.value)
        assert (letter.reason, letter.key, letter.stage) == ("too_large", "mid", "ingest")
        assert len(record.value) <= 3000 and letter.payload_truncated
        assert letter.payload_size is not None and letter.payload_size > 6000
        assert mid.model_dump_json(exclude_none=True).startswith(letter.payload or "-")


def test_a_dead_letter_its_topic_cannot_take_is_an_error_not_a_silent_drop(settings: CommonSettings) -> None:
    """A dead-letter topic limited below the smallest a letter is cut to (1,024 bytes of room): the letter is not
    sent and the publisher says so (the caller keeps the input: a file is read again, a push answered 503)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    from schemas.topics import ensure_configured

    cfg = ingest_settings_from(settings)
    ensure_configured(cfg, [cfg.topic_raw, cfg.topic_dlq])
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap.split(","))
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, cfg.topic_dlq, configs={"max.message.bytes": "900"})])
    admin.close()
    publisher = KafkaPublisher(cfg)
    small = DeadLetter(reason="invalid_json", error="not JSON", stage="ingest", key="small", payload="{")
    large = DeadLetter(reason="invalid_json", error="not JSON", stage="ingest", key="large", payload="{" * 5000)
    try:
        assert publisher.limits[cfg.topic_dlq] == 900
        publisher.dead_letter([small])  # fits as it is
        with pytest.raises(PublishError, match=r"dead letter not sent: .* takes at most 900") as raised:
            publisher.dead_letter([large])
        assert set(raised.value.failed) == {"large"}
    finally:
        publisher.close()
    (record,) = consume(cfg.kafka_bootstrap, cfg.topic_dlq, expected=1)
    assert record.key == b"small"


def test_records_land_on_the_default_partitioners_partition(settings: CommonSettings) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.partitioner.default import murmur2

    cfg = ingest_settings_from(settings)
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap.split(","), client_id="ingest-test")
    try:
        admin.create_topics([NewTopic(cfg.topic_raw, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    docs = [
        RawDocument(id=f"doc-{i}-{'x' * (i % 7)}", channel="news", source="t", text=f"story {i}") for i in range(60)
    ]
    publisher = KafkaPublisher(cfg)
    try:
        publisher.send(docs).wait()
    finally:
        publisher.close()
    records = consume(cfg.kafka_bootstrap, cfg.topic_raw, expected=60)
    assert len(records) == 60
    for record in records:  # what any other producer of the same key (Java or kafka-python) would pick
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 3, record.key
    assert len({r.partition for r in records}) == 3


def test_replay_creates_its_topics_and_publishes_stable_ids(settings: CommonSettings) -> None:
    cfg = ingest_settings_from(settings)
    assert cfg.seed_data is not None, "the test settings name the seed data"
    result = CliRunner().invoke(
        ingest,
        [
            "replay",
            "--dataset",
            "banking77",
            "--limit",
            "40",
            "--rate",
            "400",
            "--kafka-topic-partitions",
            "2",
            *_flags(cfg),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["published"] == 40
    # ingest created its two topics with the configured partitions (the broker's auto-creation would give 3)
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap)
    try:
        described = {
            d.get("topic") or d.get("name"): len(d["partitions"])
            for d in admin.describe_topics([cfg.topic_raw, cfg.topic_dlq])
        }
    finally:
        admin.close()
    assert described == {cfg.topic_raw: 2, cfg.topic_dlq: 2}
    records = consume(cfg.kafka_bootstrap, cfg.topic_raw, expected=40)
    assert sorted(r.key.decode() for r in records) == sorted(f"banking77-train-{i}" for i in range(40))
    assert {RawDocument.model_validate_json(r.value).channel for r in records} == {"customer_service"}


def _flags(cfg: IngestSettings) -> list[str]:
    flags = [
        "--kafka-bootstrap",
        cfg.kafka_bootstrap,
        "--topic-raw",
        cfg.topic_raw,
        "--topic-dlq",
        cfg.topic_dlq,
        "--data-dir",
        str(cfg.data_dir),
        "--per-host-interval-s",
        "0",
        "--read-timeout-s",
        "2",
        "--backoff-initial-s",
        "0.01",
        "--fetch-retries",
        "2",
    ]
    if cfg.database_url is not None:
        flags += ["--database-url", cfg.database_url.get_secret_value()]
    if cfg.seed_data is not None:
        flags += ["--seed-data", str(cfg.seed_data)]
    return flags


def _site(site: Site) -> None:
    html = {"Content-Type": "text/html; charset=utf-8"}
    site.routes["/robots.txt"] = Route(body=b"User-agent: *\nDisallow: /members/\n")
    site.routes["/markets/apple"] = Route(body=article_html("Apple warns on China", STORY).encode(), headers=html)
    site.routes["/partners/apple"] = Route(
        body=article_html("Apple warns", "Example Wire. " + STORY.replace("fell 4%", "fell 4.1%")).encode(),
        headers=html,
    )
    site.routes["/markets/hsbc"] = Route(body=article_html("HSBC profit", OTHER_STORY).encode(), headers=html)
    site.routes["/members/apple"] = Route(body=article_html("Apple (members)", STORY).encode(), headers=html)
    date = "Fri, 20 Nov 2026 08:00:00 +0000"
    site.routes["/feeds/markets.xml"] = Route(
        body=rss(
            [
                ("Apple warns on China", site.url("/markets/apple"), date),
                ("HSBC profit", site.url("/markets/hsbc"), date),
                ("Members only", site.url("/members/apple"), date),
            ]
        ).encode(),
        headers={"Content-Type": "application/rss+xml"},
        etag='"m1"',
        last_modified="Fri, 20 Nov 2026 08:00:00 GMT",
    )
    atom = (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>Wire</title>'
        f"<id>urn:wire</id><updated>2026-11-20T09:00:00Z</updated><entry><title>Apple warns</title>"
        f'<link href="{site.url("/partners/apple")}"/><id>urn:wire:1</id><updated>2026-11-20T09:00:00Z</updated>'
        f"<summary>Apple warns.</summary></entry></feed>"
    )
    site.routes["/feeds/wire.atom"] = Route(
        body=atom.encode(), headers={"Content-Type": "application/atom+xml"}, etag='"w1"'
    )


def test_acceptance_site_feeds_and_customer_exports(settings: CommonSettings, tmp_path: Path) -> None:
    """Issue 5, "Checked by": disallowed pages never fetched, unchanged feeds answered 304, each story once with
    its copies linked, and no personal data of the covered kinds reaches Kafka."""
    cfg = ingest_settings_from(settings, data_dir=tmp_path / "state")
    site = Site()
    try:
        _site(site)
        runner = CliRunner()
        feeds = ["--feed", site.url("/feeds/markets.xml"), "--feed", site.url("/feeds/wire.atom")]
        first = runner.invoke(ingest, ["crawl", *feeds, "--once", *_flags(cfg)])
        assert first.exit_code == 0, first.output
        second = runner.invoke(ingest, ["crawl", *feeds, "--once", *_flags(cfg)])  # a later cron run
        assert second.exit_code == 0, second.output

        assert site.requests_to("/members/apple") == []
        for feed in ("/feeds/markets.xml", "/feeds/wire.atom"):
            seen = site.requests_to(feed)
            assert [s.status for s in seen] == [200, 304]
            assert seen[1].headers.get("if-none-match")
        assert len(site.requests_to("/markets/apple")) == 1

        inbox = tmp_path / "exports"
        inbox.mkdir()
        (inbox / "tickets.jsonl").write_text(
            "\n".join(
                [
                    json.dumps(
                        {"id": "T1", "text": f"Hi, my name is Sarah Connor, card {CARD} was cloned, mail {EMAIL}"}
                    ),
                    json.dumps({"id": "T2", "text": f"Please move my savings to {IBAN}; account number {ACCOUNT}"}),
                    f'{{"id": "T3", "text": "truncated line with {EMAIL} and {PHONE}',
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        (inbox / "calls.csv").write_text(f"id,text\nC1,Call me back on {PHONE} please\nC2,\n", encoding="utf-8")
        old = time.time() - 60
        for p in inbox.iterdir():
            os.utime(p, (old, old))
        for _ in range(2):  # run twice: the second run publishes nothing
            files = runner.invoke(ingest, ["files", str(inbox), "--once", *_flags(cfg)])
            assert files.exit_code == 0, files.output
    finally:
        site.close()

    records = consume(cfg.kafka_bootstrap, cfg.topic_raw, expected=6)
    docs = [RawDocument.model_validate_json(r.value) for r in records]
    assert [r.key.decode() for r in records if r.key] == [d.id for d in docs]
    news = [d for d in docs if d.channel == "news"]
    assert len(news) == 3 and len({d.id for d in news}) == 3  # each story once, no re-publish from run two
    apple = next(d for d in news if (d.url or "").endswith("/markets/apple"))
    wire = next(d for d in news if (d.url or "").endswith("/partners/apple"))
    assert apple.is_novel is True and wire.is_novel is False and wire.story_id == apple.id
    cs = [d for d in docs if d.channel == "customer_service"]
    assert sorted(d.id for d in cs) == ["files:C1", "files:T1", "files:T2"]
    dead = consume(cfg.kafka_bootstrap, cfg.topic_dlq, expected=2)
    assert sorted(DeadLetter.model_validate_json(r.value).reason for r in dead) == ["invalid_json", "schema_violation"]
    assert_no_pii([r.value for r in records] + [r.value for r in dead])

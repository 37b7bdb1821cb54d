"""Configuration: env vars and flags, precedence, secrets masked."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from riskstream.cliutil import with_settings
from riskstream.settings import CommonSettings


@click.command()
@with_settings(CommonSettings)
def show(settings: CommonSettings) -> None:
    click.echo(f"{settings.kafka_bootstrap}|{settings.es_url}|{settings.log_json}|{settings.db_url}")


def test_every_setting_is_a_flag() -> None:
    names = {p.name for p in show.params}
    assert set(CommonSettings.model_fields) <= names
    help_text = CliRunner().invoke(show, ["--help"]).output
    assert "--kafka-bootstrap" in help_text
    assert "RISKSTREAM_KAFKA_BOOTSTRAP" in help_text


def test_flag_overrides_env_and_env_overrides_default(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("RISKSTREAM_KAFKA_BOOTSTRAP", "10.1.2.3:9092")
    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    out = runner.invoke(show, []).output.strip().split("|")
    assert out[0] == "10.1.2.3:9092"
    assert out[1] == "http://127.0.0.1:9200"
    assert out[3] == f"sqlite:///{tmp_path.resolve() / 'riskstream.db'}"
    out = runner.invoke(show, ["--kafka-bootstrap", "127.0.0.1:1", "--log-json"]).output.strip().split("|")
    assert out[0] == "127.0.0.1:1"
    assert out[2] == "True"


def test_invalid_value_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISKSTREAM_LOG_JSON", "not-a-bool")
    result = CliRunner().invoke(show, [])
    assert result.exit_code == 2
    assert "invalid configuration" in result.output


def test_safe_dump_masks_secrets() -> None:
    s = CommonSettings(database_url="postgresql://rs:hunter2@db:5432/rs", es_api_key="abc123secret")
    dumped = s.safe_dump()
    text = repr(dumped)
    assert "hunter2" not in text and "abc123secret" not in text
    assert dumped["db_url"] == "postgresql://rs:***@db:5432/rs"
    assert s.db_url.endswith("hunter2@db:5432/rs")  # the real value is still usable


@click.command()
@with_settings(CommonSettings)
def needs_seed(settings: CommonSettings) -> None:
    click.echo(str(settings.require_seed_data()))


def test_seed_data_must_exist(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="RISKSTREAM_SEED_DATA"):
        CommonSettings(seed_data=None).require_seed_data()
    with pytest.raises(ValueError, match="not a directory"):
        CommonSettings(seed_data=tmp_path / "missing").require_seed_data()
    # on the command line: a usage error naming the setting, not a traceback
    monkeypatch.delenv("RISKSTREAM_SEED_DATA", raising=False)
    result = CliRunner().invoke(needs_seed, [])
    assert result.exit_code == 2
    assert "no seed data configured: set RISKSTREAM_SEED_DATA" in result.output
    result = CliRunner().invoke(needs_seed, ["--seed-data", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "is not a directory" in result.output
    assert CliRunner().invoke(needs_seed, ["--seed-data", str(tmp_path)]).output.strip() == str(tmp_path)


def test_to_env_rebuilds_the_same_settings_in_a_child(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A child process given settings.to_env() sees exactly the parent's configuration, secrets included."""
    parent = CommonSettings(
        data_dir=tmp_path, database_url="postgresql://u:pw@h/db", log_json=True, kafka_bootstrap="127.0.0.1:1"
    )
    env = parent.to_env()
    assert env["RISKSTREAM_LOG_JSON"] == "true" and env["RISKSTREAM_DATABASE_URL"] == "postgresql://u:pw@h/db"
    assert "RISKSTREAM_ES_API_KEY" not in env  # unset stays unset
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert CommonSettings() == parent


def test_library_log_level_is_a_setting_and_never_below_the_root_level(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from riskstream.logs import LIBRARIES

    saved = {name: logging.getLogger(name).level for name in ("", *LIBRARIES)}
    try:
        runner = CliRunner()
        assert runner.invoke(show, ["--log-level", "debug"]).exit_code == 0
        assert logging.getLogger().level == logging.DEBUG
        assert {logging.getLogger(n).level for n in LIBRARIES} == {logging.WARNING}  # quiet by default
        assert runner.invoke(show, ["--log-level", "DEBUG", "--log-level-libraries", "DEBUG"]).exit_code == 0
        assert logging.getLogger("faust").level == logging.DEBUG  # a rebalance can be diagnosed
        assert runner.invoke(show, ["--log-level", "ERROR", "--log-level-libraries", "DEBUG"]).exit_code == 0
        assert logging.getLogger("aiokafka").level == logging.ERROR
        bad = runner.invoke(show, ["--log-level-libraries", "chatty"])
        assert bad.exit_code == 2 and "unknown log level" in bad.output
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_the_executable_keeps_each_commands_exit_code_and_output(tmp_path) -> None:
    """``riskstream`` is ``riskstream.cli:run`` (main, then a quicker exit): scripts and supervisors read its exit
    code, so the wrapper must pass success, a usage error and a command's own failure through unchanged. The
    failure is also what a user sees for a wrong --bundle: one line naming the path and the reason, no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "riskstream")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], check=False, capture_output=True, text=True, timeout=120)

    ok = run("--version")
    assert (ok.returncode, ok.stdout.strip()) == (0, "riskstream, version 0.1.0")
    usage = run("no-such-command")
    assert usage.returncode == 2 and "No such command 'no-such-command'" in usage.stderr
    docs = tmp_path / "docs.csv"
    docs.write_text("text\nRates rise\n")
    not_a_bundle = tmp_path / "not-a-bundle"
    not_a_bundle.mkdir()
    failed = run("score", "--input", str(docs), "--output", str(tmp_path / "out.jsonl"), "--bundle", str(not_a_bundle))
    assert failed.returncode == 1
    assert f"Error: cannot load the model: {not_a_bundle} is not a model bundle: manifest.json is missing" in (
        failed.stderr
    )
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("schemas.topics:TopicSetupError", "cannot connect to Kafka at 127.0.0.1:1: check kafka_bootstrap"),
        ("riskstream.modeling:ArtifactError", "/models/m-1/bundle: checksum mismatch in heads.safetensors"),
    ],
)
def test_an_error_the_user_can_fix_is_one_line_and_exit_1(error: str, message: str) -> None:
    """Kafka unreachable, a corrupt bundle: the message says what to fix; a traceback would bury it."""
    import importlib

    module, name = error.split(":")
    cls = getattr(importlib.import_module(module), name)

    @click.command()
    @with_settings(CommonSettings)
    def fails(settings: CommonSettings) -> None:
        raise cls(message)

    result = CliRunner().invoke(fails, [])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {message}"


def test_a_bug_keeps_its_traceback() -> None:
    """Only errors meant for the user are shortened: anything else still fails loudly with its traceback."""

    @click.command()
    @with_settings(CommonSettings)
    def buggy(settings: CommonSettings) -> None:
        raise KeyError("oops")

    result = CliRunner().invoke(buggy, [])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_replaying_an_unknown_dataset_is_refused_before_connecting(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker here is unreachable (port 1): the answer must come at once and name the datasets there are."""
    from ingest.cli import ingest

    (tmp_path / "banking77").mkdir()
    (tmp_path / "banking77" / "train.csv").write_text("text,label\nhello,greeting\n")
    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(tmp_path / "data"))
    args = ["replay", "--dataset", "nosuch", "--seed-data", str(tmp_path), "--kafka-bootstrap", "127.0.0.1:1"]
    result = CliRunner().invoke(ingest, args)
    assert result.exit_code == 2
    assert "Invalid value for --dataset: no train split for dataset 'nosuch'" in result.output
    assert "datasets: ['banking77']" in result.output


def test_crawling_a_feed_that_is_not_a_url_is_refused_before_connecting(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest.cli import ingest

    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(tmp_path))
    args = ["crawl", "--feed", "http://127.0.0.1:8/feed.xml", "--feed", "news.example/rss", "--once"]
    result = CliRunner().invoke(ingest, [*args, "--kafka-bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "Invalid value for --feed: 'news.example/rss' is not an http(s) URL" in result.output


def test_a_database_url_without_a_known_dialect_is_a_usage_error_that_hides_the_password() -> None:
    result = CliRunner().invoke(show, ["--database-url", "postgersql://rs:hunter2@db/rs"])
    assert result.exit_code == 2
    assert "not a usable SQLAlchemy URL (Can't load plugin: sqlalchemy.dialects:postgersql)" in result.output
    assert "hunter2" not in result.output


def test_an_unreachable_database_is_one_line_naming_it_without_the_password(tmp_path) -> None:
    """The real PostgreSQL driver against a closed port: what an operator sees when the SQL store is down."""
    from riskstream.db import Database

    @click.command()
    @with_settings(CommonSettings)
    def uses_db(settings: CommonSettings) -> None:
        Database(settings.db_url)

    result = CliRunner().invoke(uses_db, ["--database-url", "postgresql+psycopg://rs:hunter2@127.0.0.1:1/rs"])
    assert result.exit_code == 1
    first, *_ = result.output.splitlines()
    assert first.startswith("Error: the SQL store at postgresql+psycopg://rs:***@127.0.0.1:1/rs failed: ")
    assert "Connection refused" in result.output and "hunter2" not in result.output
    assert isinstance(result.exception, SystemExit)  # reported by click, not an uncaught OperationalError


def test_an_elasticsearch_url_must_be_http_and_a_rejected_value_is_never_echoed() -> None:
    result = CliRunner().invoke(show, ["--es-url", "127.0.0.1:9200"])
    assert result.exit_code == 2 and "must be an http(s) URL of an Elasticsearch node" in result.output
    result = CliRunner().invoke(show, ["--es-url", "ftp://elastic:hunter2@es.internal:9200"])
    assert result.exit_code == 2 and "es_url" in result.output
    assert "hunter2" not in result.output
    assert CliRunner().invoke(show, ["--es-url", "https://es.internal:9243"]).output.split("|")[1] == (
        "https://es.internal:9243"
    )

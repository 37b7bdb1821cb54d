"""``riskstream demo``: the whole pipeline on one machine, with embedded defaults and the seed data.

1. start Kafka and Elasticsearch on loopback (``services up``; cached after the first run) and migrate the store;
2. make sure a champion model exists (``finetune run --quick`` the first time: a few minutes on a laptop CPU);
3. start an inference worker and the alert engine;
4. replay a slice of each seed dataset's test split into ``riskstream.docs.raw`` through the ingest edge (PII
   redaction, dedupe); replay ids are stable (``<dataset>-<split>-<row>``), so a second demo overwrites
   the same documents instead of adding copies;
5. wait until every replayed document is searchable, then print the risk picture and write a plot.

Every step runs the same ``riskstream`` command an operator would run, as a child process; the demo only
orchestrates and reports. Services are left running for the dashboard (``riskstream dashboard run``) and
stopped with ``riskstream services down``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from riskstream.cliutil import with_settings
from riskstream.settings import CommonSettings

DEMO_SLICES: dict[str, int] = {
    "financial_phrasebank": 300,
    "fin_tweets_topic": 300,
    "banking77": 300,
    "cs_sentiment": 300,
}
MAX_ALERT_RESTARTS = 3  # the alert engine exits non-zero when its agent crashes; the demo restarts it this often


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "riskstream", *args]


def _env(settings: CommonSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    env.update(settings.to_env())
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def _step(title: str) -> None:
    click.secho(f"\n==> {title}", bold=True)


def _run(args: Sequence[str], env: dict[str, str], *, capture: bool = False) -> str:
    result = subprocess.run(list(args), env=env, check=False, text=True, capture_output=capture)
    if result.returncode != 0:
        detail = (result.stderr or "")[-2000:] if capture else ""
        raise click.ClickException(f"`{' '.join(args[2:])}` failed with exit code {result.returncode}\n{detail}")
    return result.stdout if capture else ""


def _count(client: Any, alias: str, query: dict[str, Any] | None = None) -> int:
    client.indices.refresh(index=alias)
    return int(client.count(index=alias, query=query or {"match_all": {}})["count"])


def _summary(client: Any, settings: CommonSettings, out_dir: Path, query: dict[str, Any]) -> dict[str, Any]:
    alias = settings.es_docs_alias
    aggs = client.search(
        index=alias,
        size=0,
        query=query,
        aggs={
            "by_channel": {
                "terms": {"field": "channel"},
                "aggs": {
                    "sentiment": {"terms": {"field": "sentiment.label"}},
                    "risk": {"avg": {"field": "risk_score"}},
                    "topics": {
                        "terms": {"field": "topic.label", "size": 8, "order": {"risk": "desc"}, "min_doc_count": 5},
                        "aggs": {"risk": {"avg": {"field": "risk_score"}}},
                    },
                },
            },
            "versions": {"terms": {"field": "model_version"}},
        },
    )["aggregations"]
    summary: dict[str, Any] = {"channels": {}, "model_versions": [b["key"] for b in aggs["versions"]["buckets"]]}
    for bucket in aggs["by_channel"]["buckets"]:
        summary["channels"][bucket["key"]] = {
            "documents": bucket["doc_count"],
            "mean_risk": round(bucket["risk"]["value"] or 0.0, 3),
            "sentiment": {b["key"]: b["doc_count"] for b in bucket["sentiment"]["buckets"]},
            "riskiest_topics": [
                {"topic": b["key"], "documents": b["doc_count"], "mean_risk": round(b["risk"]["value"] or 0.0, 3)}
                for b in bucket["topics"]["buckets"]
            ],
        }
    _plot(summary, out_dir / "demo-risk.png")
    return summary


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channels = list(summary["channels"].items())
    if not channels:
        return
    fig, axes = plt.subplots(1, len(channels), figsize=(7 * len(channels), 4.5), squeeze=False)
    for ax, (channel, data) in zip(axes[0], channels, strict=True):
        topics = data["riskiest_topics"][::-1]
        labels = [t["topic"] if len(t["topic"]) <= 40 else t["topic"][:39] + "\u2026" for t in topics]
        ax.barh(labels, [t["mean_risk"] for t in topics], color="#c0392b")
        ax.set_xlim(0, 1)
        ax.set_xlabel("mean P(negative)")
        ax.set_title(f"{channel}: riskiest topics ({data['documents']} docs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ensure_dashboard_admin(env: dict[str, str], out_dir: Path) -> None:
    """Create a `demo-admin` dashboard user the first time, with a random password kept in a 0600 file."""
    import secrets

    users = json.loads(_run(_cli("dashboard", "users", "list"), env, capture=True) or "[]")
    if users:
        return
    password = secrets.token_urlsafe(12)
    _run(
        _cli("dashboard", "users", "add", "demo-admin", "--role", "admin"),
        {**env, "RISKSTREAM_NEW_USER_PASSWORD": password},
    )
    login = out_dir / "dashboard-login.txt"
    login.touch(mode=0o600)
    login.write_text(f"user: demo-admin\npassword: {password}\n", encoding="utf-8")
    click.echo(f"dashboard user demo-admin created; its password is in {login}")


class Child:
    """A long-running child of the demo (worker, alert engine) with its own log, restarted when it exits.

    Like a production supervisor: an exit is answered with a fresh start, up to ``max_restarts`` times (the alert
    engine exits non-zero when its agent crashes and resumes from its committed offsets); one more exit raises.
    Logs are appended across demo runs, so every start writes a header line with the time and the attempt: the
    current run's output is what follows the last header.
    """

    def __init__(
        self, name: str, args: Sequence[str], env: dict[str, str], log_path: Path, *, max_restarts: int = 0
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = env
        self.log_path = log_path
        self.max_restarts = max_restarts
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = log_path.open("ab")

    def start(self) -> None:
        stamp = datetime.now(tz=UTC).isoformat(timespec="seconds")
        self._log.write(f"\n===== {stamp} riskstream demo: {self.name} start {self.restarts + 1} =====\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

    def check(self) -> None:
        """Restart the child if it has exited; raise ``ClickException`` once it has used up its restarts."""
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        if self.restarts >= self.max_restarts:
            times = f"{self.restarts + 1} times, last with code {code}" if self.restarts else f"with code {code}"
            raise click.ClickException(f"the {self.name} exited {times}; see {self.log_path}")
        self.restarts += 1
        click.echo(f"\n  the {self.name} exited with code {code}; restarting it (see {self.log_path.name})")
        self.start()

    def stop(self) -> None:
        """SIGTERM (the child drains and commits), a kill after 60 s; then close the log."""
        proc = self.proc
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    click.echo(f"{self.name} did not drain within 60 s; killing it")
                    proc.kill()
                    proc.wait()
        finally:
            self._log.close()


@click.command("demo")
@click.option("--per-dataset", type=int, default=None, help="Documents replayed per seed dataset (default 300).")
@click.option("--timeout", "timeout_s", type=int, default=900, show_default=True, help="Seconds to wait for scoring.")
@click.option("--keep-services/--stop-services", default=True, show_default=True)
@with_settings(CommonSettings)
def demo(per_dataset: int | None, timeout_s: int, keep_services: bool, settings: CommonSettings) -> None:
    """Run the whole pipeline on this machine with seed data and print the live risk picture."""
    from riskstream.es import make_client

    settings.require_seed_data()
    env = _env(settings)
    out_dir = settings.data_dir / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    started = time.monotonic()

    _step("1/5 services: Kafka and Elasticsearch on loopback")
    _run(_cli("services", "up"), env)

    _step("2/5 model: champion in the registry (quick fine-tune on first run)")
    listed = _run(_cli("finetune", "list", "--json"), env, capture=True)
    versions = json.loads(listed or "[]")
    if not any(v.get("status") == "champion" for v in versions):
        _run(_cli("finetune", "run", "--quick"), env)
    else:
        click.echo("a champion exists; skipping training")

    _step("3/5 processes: alert rules, dashboard login, inference worker and alert engine")
    import alerts as alerts_pkg

    _run(_cli("alerts", "rules", "add", str(Path(alerts_pkg.__file__).parent / "default_rules.yaml")), env)
    _ensure_dashboard_admin(env, out_dir)
    worker = Child("worker", _cli("worker"), env, logs / "worker.log")
    alerts = Child("alert engine", _cli("alerts", "run"), env, logs / "alerts.log", max_restarts=MAX_ALERT_RESTARTS)
    worker.start()
    try:
        alerts.start()
    except OSError as exc:
        click.echo(f"alert engine not started: {exc}")

    client = make_client(settings)
    try:
        _step("4/5 ingest: replay seed slices through the ingest edge")
        # Document ids are stable, so an earlier run's copies are already in the index: only copies scored from
        # now on count (the worker overwrites them), and the summary describes this run's documents alone.
        replay_started = datetime.now(tz=UTC) - timedelta(seconds=1)
        sent = 0
        prefixes = []
        for dataset, limit in DEMO_SLICES.items():
            n = per_dataset or limit
            _run(_cli("ingest", "replay", "--dataset", dataset, "--split", "test", "--limit", str(n)), env)
            sent += n
            prefixes.append(f"{dataset}-test-")
        replayed = {
            "bool": {
                "should": [{"prefix": {"id": p}} for p in prefixes],
                "minimum_should_match": 1,
                "filter": [{"range": {"scored_at": {"gte": replay_started.isoformat()}}}],
            }
        }

        _step(f"5/5 waiting for {sent} documents to become searchable")
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            worker.check()
            alerts.check()
            seen = _count(client, settings.es_docs_alias, replayed)
            click.echo(f"\r  searchable: {seen}/{sent}", nl=False)
            if seen >= sent:
                break
            time.sleep(2)
        click.echo("")
        summary = _summary(client, settings, out_dir, replayed)
        summary["replayed"] = sent
        summary["searchable"] = seen
        summary["seconds"] = round(time.monotonic() - started, 1)
        summary["alert_engine_restarts"] = alerts.restarts
        (out_dir / "demo-summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        click.echo(json.dumps(summary, indent=2))
        click.echo(f"\nplot: {out_dir / 'demo-risk.png'}   logs: {logs}")
        click.echo("next: `riskstream dashboard run` for the live view; `riskstream services down` to stop.")
        if seen < sent:
            raise click.ClickException(f"only {seen} of {sent} documents became searchable within {timeout_s} s")
    finally:
        alerts.stop()
        worker.stop()
        if not keep_services:
            _run(_cli("services", "down"), env)

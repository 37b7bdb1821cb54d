"""``riskstream worker`` and ``riskstream score``."""

from __future__ import annotations

import sys
import time
from collections.abc import MutableMapping
from pathlib import Path

import click

from inference.settings import EngineSettings, WorkerSettings
from riskstream.cliutil import echo_json, end_without_teardown, with_settings


@click.command("worker")
@with_settings(WorkerSettings)
def worker(settings: WorkerSettings) -> None:
    """Run one inference worker: Kafka raw topic -> model -> Elasticsearch + scored topic (+ dead letters).

    Start several with the same --group-id to share the partitions. SIGTERM/SIGINT drains the in-flight batch,
    commits and exits 0.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    apply_onednn_cache_capacity(settings, os.environ)  # before torch loads oneDNN
    from inference.worker import Worker
    from riskstream.modeling import ArtifactError

    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    w = Worker(settings)
    w.install_signals()
    try:
        w.run()
    except ArtifactError as exc:  # the model to start with (a hot swap refuses a bad one and keeps serving)
        raise click.ClickException(f"cannot serve the model: {exc}") from exc


def apply_onednn_cache_capacity(settings: WorkerSettings, environ: MutableMapping[str, str]) -> None:
    """Cap oneDNN's kernel cache (``--onednn-cache-capacity``) through its environment variable, which oneDNN reads
    once, when torch first uses it: call this before importing torch."""
    import logging

    if "torch" in sys.modules:
        logging.getLogger(__name__).warning(
            "torch is already imported: oneDNN may have read its cache capacity already (wanted %d)",
            settings.onednn_cache_capacity,
        )
    environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(settings.onednn_cache_capacity)


def engine_for(settings: EngineSettings) -> object:
    """The engine for offline use: --bundle PATH, else the registry's champion."""
    from inference.device import place
    from inference.hotswap import load_engine, load_path_engine, registry_lookup
    from riskstream.modeling import ArtifactError

    placement = place(settings.device, settings.precision, settings.torch_threads, backend=settings.backend)
    try:
        if settings.bundle is not None:
            return load_path_engine(settings.bundle, settings, placement)
        record = registry_lookup(settings.db_url)()
        if record is None:
            raise click.ClickException(
                "no champion model in the registry: run `riskstream finetune run` or pass --bundle"
            )
        return load_engine(record, settings, placement)
    except ArtifactError as exc:  # a missing, corrupt or tampered bundle: say which and why, no traceback
        raise click.ClickException(f"cannot load the model: {exc}") from exc


@click.command("score")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--channel",
    type=click.Choice(["news", "customer_service"]),
    default=None,
    help="Channel of every row without a 'channel' column.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (documents, docs/s, model version).")
@with_settings(EngineSettings)
def score(input_path: Path, output_path: Path, channel: str | None, as_json: bool, settings: EngineSettings) -> None:
    """Score a CSV (column text, optional channel/id) or JSONL file into JSONL, in input order.

    The CPU fast path is --backend onnxruntime --precision int8 (it also starts fastest: it never imports
    transformers); on a CPU with native bf16, --precision bf16. `riskstream bench inference` measures the speed and
    accuracy change of each path.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from inference.engine import Engine
    from inference.score import InputError, offline_settings, read_rows, score_file

    try:
        next(read_rows(input_path), None)  # the format and the header, before seconds of loading the model
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    started = time.perf_counter()
    engine = engine_for(offline_settings(settings))
    assert isinstance(engine, Engine)
    try:
        summary = score_file(engine, input_path, output_path, channel=channel, progress=not as_json)
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    elapsed = time.perf_counter() - started
    summary.update(seconds=round(elapsed, 3), docs_per_s=round(summary["documents"] / max(elapsed, 1e-9), 1))
    if as_json:
        echo_json(summary)
    else:
        click.echo(
            f"scored {summary['documents']} documents with {summary['model_version']} -> {output_path} "
            f"({summary['docs_per_s']} docs/s)"
        )
    # the output file is closed and renamed into place, the summary printed: nothing is left to finish at exit
    end_without_teardown()

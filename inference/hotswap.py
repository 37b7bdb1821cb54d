"""Loading the champion model and swapping to a newly promoted one without stopping the stream.

A background thread polls the registry every ``hotswap_interval_s``. When the champion changes it loads the new
bundle *off the hot path* (checksums verified against the registry's digest, quantized if configured, warmed up)
and parks the ready engine. The worker picks it up between micro-batches (:meth:`ModelWatcher.take`), so no batch
mixes versions. A bundle that fails verification or loading is refused: the worker keeps serving the old
version, logs the reason and counts ``riskstream_worker_failures{reason="model_refused"}``; the same refused
(version, digest) is not retried until it changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from inference.device import Placement
from inference.engine import Engine, build_engine
from inference.metrics import WorkerMetrics
from inference.settings import EngineSettings
from riskstream.modeling import ArtifactError, load_bundle
from schemas.records import ModelVersionRecord

log = logging.getLogger(__name__)

ChampionLookup = Callable[[], ModelVersionRecord | None]


def registry_lookup(db_url: str) -> ChampionLookup:
    """A function returning the registry's current champion (one short SQL query per call)."""
    from riskstream.db import Database
    from riskstream.registry import get_champion

    db = Database(db_url)

    def lookup() -> ModelVersionRecord | None:
        with db.session() as session:
            return get_champion(session)

    return lookup


def load_engine(record: ModelVersionRecord, settings: EngineSettings, placement: Placement) -> Engine:
    """Load, verify (registry digest) and warm up the engine of a registered version; ArtifactError if unfit."""
    bundle = load_bundle(
        Path(record.artifact_path),
        device="cpu",
        expected_sha256=record.artifact_sha256,
        encoder=settings.backend != "onnxruntime",  # that backend runs its own exported encoder
        encoder_impl=settings.encoder_impl,
    )
    if bundle.version != record.version:
        raise ArtifactError(
            f"bundle at {record.artifact_path} is version {bundle.version}, registry says {record.version}"
        )
    engine = build_engine(bundle, settings, placement)
    engine.warmup()
    return engine


def load_path_engine(path: Path, settings: EngineSettings, placement: Placement) -> Engine:
    bundle = load_bundle(
        path, device="cpu", encoder=settings.backend != "onnxruntime", encoder_impl=settings.encoder_impl
    )
    engine = build_engine(bundle, settings, placement)
    engine.warmup()
    return engine


class ModelWatcher:
    def __init__(
        self,
        lookup: ChampionLookup,
        *,
        settings: EngineSettings,
        placement: Placement,
        current: tuple[str, str],
        interval_s: float,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.lookup = lookup
        self.settings = settings
        self.placement = placement
        self.current = current  # (version, digest) being served or being loaded
        self.interval_s = interval_s
        self.metrics = metrics
        self._refused: set[tuple[str, str]] = set()
        self._ready: Engine | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="riskstream-hotswap", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def take(self) -> Engine | None:
        """The newly loaded engine, once; None when nothing changed."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def check_once(self) -> bool:
        """Poll the registry; load a new champion if there is one. True when an engine was made ready."""
        try:
            record = self.lookup()
        except Exception as exc:  # the registry being briefly unreachable must not stop serving
            log.warning("model registry unreachable: %s", exc)
            return False
        if record is None:
            return False
        key = (record.version, record.artifact_sha256)
        if key == self.current or key in self._refused:
            return False
        log.info("new champion %s: loading off the hot path", record.version)
        try:
            engine = load_engine(record, self.settings, self.placement)
        except ArtifactError as exc:
            self._refused.add(key)
            log.error("refusing model %s, still serving %s: %s", record.version, self.current[0], exc)
            if self.metrics is not None:
                self.metrics.failures.labels(reason="model_refused").inc()
            return False
        with self._lock:
            self._ready = engine
            self.current = key
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_once()

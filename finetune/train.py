"""Multi-task fine-tuning: one shared encoder, one linear head per task, each batch drawn from one task.

Batches: the rows of each task are tokenised once and split into streams by dataset (a head trained on two
datasets gets two streams; analyst labels are a stream of their own). Each stream is shuffled and cut into length
buckets (rows of similar length together, so dynamic padding wastes little), and each training step draws a
stream with probability proportional to ``rows ** (1 / task_sampling_temperature)``. AdamW with linear warm-up
and decay; the heads learn faster than the pretrained encoder. GPU: automatic mixed precision (bf16 where
supported, else fp16 with a gradient scaler). CPU: bf16 autocast where the CPU has native bf16 (``cpu_bf16``
decides; by default detected), else full precision; torch uses every core it is given.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from finetune.data import DATASETS, Example, TrainingData
from finetune.settings import FinetuneSettings
from riskstream.hardware import has_native_bf16
from riskstream.modeling import MultiTaskModel, build_untrained, normalize_texts, pad

log = logging.getLogger(__name__)


class TrainingAbortedError(RuntimeError):
    """Training stopped on request (SIGTERM); nothing was written."""


@dataclass
class TrainResult:
    model: MultiTaskModel
    tokenizer: Any
    device: torch.device
    steps: int
    planned_steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    precision: str = "fp32"
    step_shares: dict[str, float] = field(default_factory=dict)  # "<task>/<dataset>" -> share of the steps
    ema_steps: int = 0  # steps averaged into the saved weights (0: the last step's weights)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():  # pragma: no cover - no GPU here
        torch.cuda.manual_seed_all(seed)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def autocast_for(
    device: torch.device, cpu_bf16: bool | None, *, native_bf16: bool | None = None
) -> tuple[Callable[[], Any], torch.dtype | None, bool]:
    """(context factory, autocast dtype or None, needs a GradScaler). On CPU, bf16 autocast when ``cpu_bf16``, or
    when it is None and the CPU multiplies bf16 natively (``native_bf16``, detected when not given): the weights
    (and AdamW's state) stay fp32, only the forward and backward products run in bf16."""
    if device.type == "cuda":  # pragma: no cover - no GPU here
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return (lambda: torch.autocast("cuda", dtype=dtype)), dtype, dtype == torch.float16
    if cpu_bf16 is None:
        cpu_bf16 = has_native_bf16() if native_bf16 is None else native_bf16
    if cpu_bf16:
        return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), torch.bfloat16, False
    return contextlib.nullcontext, None, False


def freeze(model: MultiTaskModel, *, embeddings: bool, layers: int) -> int:
    """Freeze the embeddings and/or the lowest ``layers`` transformer layers; returns the frozen parameter count."""
    frozen = 0
    encoder: Any = model.encoder
    if embeddings and hasattr(encoder, "embeddings"):
        for p in encoder.embeddings.parameters():
            p.requires_grad = False
            frozen += p.numel()
    if layers:
        stack = getattr(getattr(encoder, "encoder", None), "layer", None)
        if stack is None:
            raise ValueError("freeze_layers is set but the encoder has no .encoder.layer stack")
        for layer in list(stack)[:layers]:
            for p in layer.parameters():
                p.requires_grad = False
                frozen += p.numel()
    return frozen


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int, normalization: str) -> list[list[int]]:
    """Token ids of ``texts`` after the text normalization (see ``riskstream.modeling.normalize_text``)."""
    texts = normalize_texts(texts, normalization)
    out: list[list[int]] = []
    for start in range(0, len(texts), 2048):
        enc = tokenizer(list(texts[start : start + 2048]), truncation=True, max_length=max_length)
        out.extend(enc["input_ids"])
    return out


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random, bucket: int = 50) -> list[list[int]]:
    """Shuffle, sort by length within windows of ``bucket`` batches, cut into batches, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * bucket
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _stream_batches(
    rows: Sequence[int], encoded: Sequence[Sequence[int]], batch_size: int, rng: random.Random
) -> Iterator[list[int]]:
    """Endless length-bucketed batches over ``rows`` (indices into the task's rows), reshuffled every pass."""
    lengths = [len(encoded[i]) for i in rows]
    while True:
        for batch in bucketed_batches(lengths, batch_size, rng):
            yield [rows[j] for j in batch]


# every name a multiplier may use: the tasks, the seed datasets and the analysts' labels
SAMPLING_NAMES = frozenset(DATASETS) | {spec.task for spec in DATASETS.values()} | {"analyst"}


def sampling_streams(train: dict[str, list[Example]]) -> dict[tuple[str, str], list[int]]:
    """The rows of each task split by where they came from: ``(task, dataset)`` -> row indices into the task's
    rows. A head trained on two datasets (news sentiment: phrasebank and tweets) gets two streams, so the smaller
    dataset is not drowned by the larger; analyst labels form a stream of their own per task."""
    streams: dict[tuple[str, str], list[int]] = {}
    for task, rows in train.items():
        for i, ex in enumerate(rows):
            streams.setdefault((task, ex.source), []).append(i)
    return streams


def sampling_weights(
    sizes: dict[tuple[str, str], int],
    temperature: float,
    multipliers: dict[str, float] | None = None,
    absent: Iterable[str] = (),
) -> dict[tuple[str, str], float]:
    """Probability of drawing each stream's next batch: ``rows ** (1 / temperature)`` times the multipliers of its
    task and of its dataset (default 1 each; once where the two share a name, as cs_sentiment does), normalised.
    Streams without rows, or at weight 0, are never drawn. Multipliers for ``absent`` names (tasks or datasets
    that exist but have no rows in this run, like the default's cs_sentiment in a news-only run) are ignored; any
    other name that matches no stream is refused."""
    multipliers = multipliers or {}
    known = {task for task, _ in sizes} | {source for _, source in sizes} | set(absent)
    unknown = sorted(set(multipliers) - known)
    if unknown:
        raise ValueError(f"task_weight_multipliers names unknown tasks or datasets {unknown} (known: {sorted(known)})")
    raw = {
        key: n ** (1.0 / temperature) * math.prod(multipliers.get(name, 1.0) for name in set(key))
        for key, n in sizes.items()
        if n > 0
    }
    raw = {key: w for key, w in raw.items() if w > 0}
    total = sum(raw.values())
    if not total:
        raise ValueError("every task has a sampling weight of 0: nothing to train")
    return {key: w / total for key, w in raw.items()}


def training_progress(step: int, total: int, elapsed: float, budget: float | None) -> float:
    """Fraction of training done: by steps, or by the time budget if that runs out first."""
    by_steps = step / total
    if budget is None or budget <= 0:
        return by_steps
    return max(by_steps, elapsed / budget)


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up to the peak over the first ``warmup`` fraction, then linear decay to zero."""
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 0.01)
    return max(0.0, (1.0 - progress) / max(1e-9, 1.0 - warmup))


_ENCODER_LAYER = re.compile(r"\.layer\.(\d+)\.")


def _param_groups(
    model: MultiTaskModel, lr: float, head_lr: float, weight_decay: float, layer_lr_decay: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups: heads at ``head_lr``; the encoder at ``lr``, times ``layer_lr_decay ** d`` for a parameter ``d``
    layers below the top (the embeddings are below the lowest layer); no weight decay on biases and LayerNorms."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    layers = [int(m.group(1)) for name, _ in named if (m := _ENCODER_LAYER.search(name))]
    top = max(layers, default=-1) + 1  # the embeddings are level 0, layer i level i + 1
    groups: dict[tuple[bool, bool, int], list[nn.Parameter]] = {}
    for name, p in named:
        is_head = name.startswith("heads.")
        no_decay = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        match = _ENCODER_LAYER.search(name)
        level = int(match.group(1)) + 1 if match else (0 if "embeddings" in name else top)
        below = 0 if is_head or layer_lr_decay == 1.0 else top - level  # 1.0: the four groups of before
        groups.setdefault((is_head, no_decay, below), []).append(p)
    return [
        {
            "params": params,
            "lr": head_lr if is_head else lr * layer_lr_decay**below,
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (is_head, no_decay, below), params in groups.items()
    ]


def _row_smoothing(example: Example, smoothing: float, ambiguous_smoothing: float) -> float:
    return max(smoothing, ambiguous_smoothing) if example.ambiguous else smoothing


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy with a label smoothing per row (``smoothing[i]`` of row i's target mass spread evenly over
    every label, as ``nn.CrossEntropyLoss(label_smoothing=...)`` does for all rows)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    uniform = -log_probs.mean(dim=-1)
    return ((1.0 - smoothing) * picked + smoothing * uniform).mean()


def train(
    settings: FinetuneSettings,
    data: TrainingData,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    max_steps: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune the base encoder with one head per task of ``data``. Raises TrainingAbortedError if asked to stop."""
    settings = settings.effective()
    seed_everything(settings.seed)
    torch.set_num_threads(settings.resolved_threads())
    device = select_device(settings.device)
    model, tokenizer = build_untrained(settings.resolved_base_model(), data.specs, dropout=settings.dropout)
    frozen = freeze(model, embeddings=settings.freeze_embeddings, layers=settings.freeze_layers)
    model.to(device)
    model.train()

    encoded = {
        task: tokenize(tokenizer, [ex.text for ex in rows], settings.max_length, settings.text_normalization)
        for task, rows in data.train.items()
    }
    labels = {task: [ex.label for ex in rows] for task, rows in data.train.items()}
    # each row's label smoothing: more for the rows annotators disputed (ambiguous_label_smoothing, when set)
    smoothing = {
        task: [_row_smoothing(ex, settings.label_smoothing, settings.ambiguous_label_smoothing) for ex in rows]
        for task, rows in data.train.items()
    }
    per_row = settings.ambiguous_label_smoothing > 0 and any(ex.ambiguous for r in data.train.values() for ex in r)
    sizes = {task: len(rows) for task, rows in data.train.items()}
    streams = sampling_streams(data.train)
    weights = sampling_weights(
        {key: len(rows) for key, rows in streams.items()},
        settings.task_sampling_temperature,
        settings.task_weight_multipliers,
        absent=SAMPLING_NAMES,
    )
    shares = {f"{task}/{source}": round(w, 4) for (task, source), w in sorted(weights.items())}
    rng = random.Random(settings.seed)
    iters = {
        key: _stream_batches(streams[key], encoded[key[0]], settings.batch_size, random.Random(settings.seed + k))
        for k, key in enumerate(sorted(weights))
    }
    total = max(1, math.ceil(settings.epochs * sum(sizes.values()) / settings.batch_size))
    if max_steps is not None:
        total = min(total, max_steps)

    optimizer = torch.optim.AdamW(
        _param_groups(model, settings.lr, settings.head_lr, settings.weight_decay, settings.layer_lr_decay)
    )
    peaks = [group["lr"] for group in optimizer.param_groups]
    budget = settings.max_train_minutes * 60 if settings.max_train_minutes else None
    autocast, amp_dtype, needs_scaler = autocast_for(device, settings.cpu_bf16)
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    pad_id = tokenizer.pad_token_id or 0
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    log.info(
        "training %d steps on %s (%s), tasks %s, step shares %s, %d frozen parameters",
        total,
        device,
        amp_dtype or "fp32",
        sizes,
        shares,
        frozen,
    )

    ema: Any = None
    if settings.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # a copy of the weights (the first update copies the current ones, later ones blend them in)
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay))
    ema_steps = 0
    stream_keys = sorted(weights)
    stream_probs = [weights[key] for key in stream_keys]
    history: list[dict[str, float]] = []
    running: dict[str, float] = {}
    stopped_at = total
    started = time.monotonic()
    bar = tqdm(total=total, desc="finetune", unit="step", disable=not progress, mininterval=2.0)
    try:
        for step in range(total):
            if should_stop():
                raise TrainingAbortedError(f"stopped at step {step}/{total}")
            progress_done = training_progress(step, total, time.monotonic() - started, budget)
            if progress_done >= 1.0:
                log.warning(
                    "time budget of %.1f min reached at step %d/%d: training ends here",
                    (budget or 0.0) / 60,
                    step,
                    total,
                )
                stopped_at = step
                break
            factor = lr_factor(progress_done, settings.warmup_ratio)
            for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                group["lr"] = peak * factor
            key = rng.choices(stream_keys, stream_probs)[0]
            task = key[0]
            idx = next(iters[key])
            input_ids, mask = pad([encoded[task][i] for i in idx], pad_id)
            target = torch.tensor([labels[task][i] for i in idx], dtype=torch.long, device=device)
            with autocast():
                logits = model(input_ids.to(device), mask.to(device), [task])[task]
                if per_row:
                    eps = torch.tensor([smoothing[task][i] for i in idx], device=device)
                    loss = smoothed_cross_entropy(logits.float(), target, eps)
                else:
                    loss = loss_fn(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:  # pragma: no cover - fp16 on GPU only
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
            if ema is not None and progress_done >= settings.ema_start:
                ema.update_parameters(model)
                ema_steps += 1
            value = float(loss.detach())
            running[task] = value if task not in running else 0.95 * running[task] + 0.05 * value
            if step % 50 == 0 or step == total - 1:
                history.append({"step": float(step), **{f"loss/{t}": v for t, v in running.items()}})
                bar.set_postfix({t.replace("_", ""): f"{v:.3f}" for t, v in running.items()}, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    seconds = time.monotonic() - started
    if ema is not None:
        if ema_steps:
            model.load_state_dict(ema.module.state_dict())
            log.info(
                "saving the moving average (decay %s) of the last %d steps' weights", settings.ema_decay, ema_steps
            )
        else:
            log.warning(
                "training ended before ema_start (%.2f): no weights averaged, the last step's are saved",
                settings.ema_start,
            )
        del ema
    model.eval()
    log.info("trained %d of %d planned steps in %.0f s", stopped_at, total, seconds)
    return TrainResult(
        model=model,
        tokenizer=tokenizer,
        device=device,
        steps=stopped_at,
        planned_steps=total,
        seconds=seconds,
        history=history,
        precision=str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        step_shares=shares,
        ema_steps=ema_steps,
    )


@torch.inference_mode()
def predict_outputs(
    model: MultiTaskModel,
    tokenizer: Any,
    texts: Sequence[str],
    task: str,
    *,
    max_length: int,
    normalization: str,
    batch_size: int = 128,
    progress: bool = False,
    desc: str = "score",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw logits of one head, pooled embeddings) for ``texts``: length-sorted batches, original order restored,
    float32 on CPU. The embeddings are what a calibration per source reads."""
    model.eval()
    device = next(model.parameters()).device
    ids = tokenize(tokenizer, texts, max_length, normalization)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    head = model.heads[task]
    assert isinstance(head, nn.Linear)
    out = torch.zeros((len(ids), head.out_features), dtype=torch.float32)
    pooled_out = torch.zeros((len(ids), head.in_features), dtype=torch.float32)
    pad_id = tokenizer.pad_token_id or 0
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc=desc, unit="batch", disable=not progress, mininterval=2.0):
        idx = order[start : start + batch_size]
        input_ids, mask = pad([ids[i] for i in idx], pad_id)
        pooled = model.embed(input_ids.to(device), mask.to(device))
        rows = torch.tensor(idx)
        out[rows] = head(pooled).float().cpu()
        pooled_out[rows] = pooled.float().cpu()
    return out, pooled_out


def example_texts(rows: Sequence[Example]) -> list[str]:
    return [ex.text for ex in rows]

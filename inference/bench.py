"""``riskstream bench inference`` and ``riskstream bench e2e``: side-by-side measurements in one run.

``bench inference`` scores the same N seed test texts (``fin_tweets_topic`` test) with

(a) a Hugging Face ``Pipeline`` one document at a time (the naive loop),
(b) the same pipeline with ``batch_size=32``,
(c) the riskstream engine in FP32, and
(d) each fast path (bf16, int8 dynamic quantization, torch.compile, onnxruntime),

and reports documents/s, non-padding tokens/s, and the share of this machine's FP32 GEMM ceiling the engine
reaches: a GEMM of the encoder's feed-forward shape is timed in the same run, and tokens/s are converted to FLOP/s
with the encoder's FLOPs per token (2 x parameters of its Linear layers + 4 x layers x hidden x sequence length for
attention scores and values). Every path is built and warmed up first, then all are timed in ``--repeats`` rounds,
each round timing every path once and the GEMM ceiling once; each keeps its best. On a virtual machine whose speed
drifts by tens of percent over minutes, a drift then touches every path alike instead of deciding a ratio.

The pipeline wraps *the same bundle* (its encoder, the ``news_topic`` head and its temperature) in a
``transformers.Pipeline`` subclass, so model and documents are identical; it computes one head while the engine
computes both heads of the channel (the heads are negligible next to the encoder).

It also measures the accuracy change of each fast path against FP32 on every seed test set (agreement of labels and
accuracy delta, ``--max-per-set`` texts per set), and optionally runs ``riskstream score`` as a subprocess on the same
texts (process start included) for the offline-scoring target.

``bench e2e`` times the engine alone on the same texts in this process (the reference for the end-to-end share:
one pass before the worker starts, one after the sustained phase, their mean rate), and runs a worker subprocess
against the configured Kafka and Elasticsearch on fresh topic and alias names: sustained documents/s from produce
to searchable (with the cores the worker used meanwhile), then produce-to-searchable p50/p95 at half that rate, and
the worker's resident memory.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from inference.settings import EngineSettings, WorkerSettings
from riskstream.cliutil import echo_json, with_settings
from riskstream.hardware import cpu_summary

if TYPE_CHECKING:  # riskstream.modeling imports torch; the CLI loads this module without it
    from riskstream.modeling import EncoderImpl

log = logging.getLogger(__name__)

# seed dataset -> (task, label mapping to the model's label set)
ACCURACY_SETS: dict[str, tuple[str, dict[str, str]]] = {
    "financial_phrasebank": ("news_sentiment", {}),
    "fin_tweets_sentiment": ("news_sentiment", {"bearish": "negative", "bullish": "positive"}),
    "fin_tweets_topic": ("news_topic", {}),
    "cs_sentiment": ("cs_sentiment", {}),
    "banking77": ("cs_topic", {}),
}


def read_split(seed: Path, dataset: str, split: str = "test", limit: int | None = None) -> list[dict[str, str]]:
    path = seed / dataset / f"{split}.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("text", "").strip()]
    return rows[:limit] if limit else rows


def gemm_timings(hidden: int, intermediate: int, threads: int, repeats: int = 20) -> tuple[float, float]:
    """(best, median) FP32 GFLOP/s of a (4096 x hidden) @ (hidden x intermediate) GEMM, the encoder's FFN shape.
    The best is the ceiling the shares are computed against (conservative); the median shows how far bursts on a
    shared or virtual machine lift it."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(4096, hidden)
    b = torch.randn(hidden, intermediate)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    flop = 2 * 4096 * hidden * intermediate
    return flop / min(times) / 1e9, flop / statistics.median(times) / 1e9


def gemm_int8_dynamic(hidden: int, intermediate: int, threads: int, repeats: int = 20) -> float:
    """Best GFLOP/s (counted as FP32-equivalent multiply-adds) of the same FFN-shaped product through a dynamically
    quantized int8 Linear, the kernel of the int8 fast path. Its ratio to the best of :func:`gemm_timings` bounds what
    that path can reach on this CPU: without AVX-512 VNNI/AMX the int8 kernels gain far less over FP32 than with
    them."""
    import torch
    from torch import nn

    from inference.engine import quantize_encoder

    torch.set_num_threads(threads)
    layer = quantize_encoder(nn.Sequential(nn.Linear(hidden, intermediate)))  # the engine's own int8 recipe
    a = torch.randn(4096, hidden)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(3):
            layer(a)
        for _ in range(repeats):
            t = time.perf_counter()
            layer(a)
            best = min(best, time.perf_counter() - t)
    return 2 * 4096 * hidden * intermediate / best / 1e9


def encoder_flops_per_token(encoder: Any, mean_seq: float) -> float:
    from torch import nn

    linear = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, nn.Linear))
    cfg = encoder.config
    return 2.0 * linear + 4.0 * cfg.num_hidden_layers * cfg.hidden_size * mean_seq


def make_pipeline(bundle: Any, task: str) -> Any:
    """A ``transformers.Pipeline`` around the bundle's encoder + one head (same weights as the engine)."""
    import torch
    from transformers import Pipeline as _Pipeline

    from riskstream.modeling import mean_pool

    labels = bundle.manifest.tasks[task].labels

    base: Any = _Pipeline  # transformers' own signatures are looser than its stubs

    class BundleHeadPipeline(base):
        def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            return {}, {}, {}

        def preprocess(self, text: str) -> dict[str, Any]:
            # the bundle's text normalization, as the engine applies it: both sides do the same work
            prepared = bundle.prepare([text])[0]
            return dict(
                self.tokenizer(prepared, truncation=True, max_length=bundle.manifest.max_length, return_tensors="pt")
            )

        def _forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            out = self.model.encoder(input_ids=ids, attention_mask=mask)
            pooled = mean_pool(out.last_hidden_state, mask)
            return {"logits": self.model.heads[task](pooled), "pooled": pooled}

        def postprocess(self, outputs: dict[str, Any]) -> dict[str, Any]:
            probs = bundle.calibrated_probs(task, outputs["logits"], outputs["pooled"])[0]
            i = int(torch.argmax(probs))
            return {"label": labels[i], "score": float(probs[i])}

    class Adapter(torch.nn.Module):
        """What Pipeline expects of a model (device, config, can_generate) around the bundle's own modules."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.encoder = model.encoder
            self.heads = model.heads
            self.config = model.encoder.config
            self.device = torch.device("cpu")
            self.dtype = torch.float32

        def can_generate(self) -> bool:
            return False

    return BundleHeadPipeline(model=Adapter(bundle.model), tokenizer=bundle.tokenizer, device=-1, framework="pt")


def _timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """``fn()``'s result and its best wall time over ``repeats`` calls (every path of a benchmark gets the same
    number, so a burst of other load on a shared machine does not decide a ratio)."""
    best = float("inf")
    out = None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def _load_bundle(settings: EngineSettings, encoder_impl: EncoderImpl = "transformers") -> Any:
    """--bundle PATH, else the registry's champion (checksum verified); a bundle that cannot be served is a
    one-line usage error."""
    from riskstream.modeling import ArtifactError, load_bundle

    try:
        if settings.bundle is not None:
            return load_bundle(settings.bundle, encoder_impl=encoder_impl)
        from inference.hotswap import registry_lookup

        record = registry_lookup(settings.db_url)()
        if record is None:
            raise click.ClickException("no champion model: pass --bundle PATH or run `riskstream finetune run`")
        return load_bundle(
            Path(record.artifact_path), expected_sha256=record.artifact_sha256, encoder_impl=encoder_impl
        )
    except ArtifactError as exc:
        raise click.ClickException(f"cannot load the model: {exc}") from exc


def run_inference_bench(
    settings: EngineSettings,
    n: int,
    *,
    max_per_set: int,
    fast_paths: list[str],
    naive_n: int | None,
    score_cli: bool,
    repeats: int = 1,
    score_sizes: Sequence[int] = (),
) -> dict[str, Any]:
    import torch

    from inference.device import Placement
    from inference.engine import Engine

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    threads = settings.torch_threads
    torch.set_num_threads(threads)
    seed = settings.require_seed_data()
    texts = [r["text"] for r in read_split(seed, "fin_tweets_topic", "test", n)]
    bundle = _load_bundle(settings)
    cfg = bundle.model.encoder.config
    enc = bundle.tokenizer(bundle.prepare(texts), truncation=True, max_length=bundle.manifest.max_length)
    lengths = [len(x) for x in enc["input_ids"]]
    real_tokens = sum(lengths)
    mean_seq = real_tokens / len(texts)
    flops_tok = encoder_flops_per_token(bundle.model.encoder, mean_seq)
    int8_gemm = gemm_int8_dynamic(cfg.hidden_size, cfg.intermediate_size, threads) if "int8" in fast_paths else None

    # every contestant is built and warmed up first, then timed in rounds, each round timing every path once (and
    # the GEMM ceiling): on a shared or virtual machine whose speed drifts by tens of percent over minutes, a drift
    # then touches every path alike instead of deciding a ratio
    contestants: dict[str, Callable[[], tuple[int, int]]] = {}
    engines: dict[str, Engine] = {}
    setup: dict[str, float] = {}
    pipe = make_pipeline(bundle, "news_topic")
    naive_texts = texts[: naive_n or len(texts)]
    naive_tokens = sum(lengths[: len(naive_texts)])

    def naive() -> tuple[int, int]:
        with torch.inference_mode():
            for t in naive_texts:
                pipe(t)
        return len(naive_texts), naive_tokens

    def batched() -> tuple[int, int]:
        with torch.inference_mode():
            list(pipe(texts, batch_size=32))
        return len(texts), real_tokens

    contestants["hf_pipeline_naive"], contestants["hf_pipeline_batch32"] = naive, batched
    with torch.inference_mode():
        pipe(naive_texts[0])
    for path in ["fp32", *fast_paths]:
        from riskstream.modeling import load_bundle

        backend = "onnxruntime" if path.startswith("onnx-") else "torch"
        precision = {"fp32-compiled": "fp32", "bf16-compiled": "bf16", "onnx-fp32": "fp32", "onnx-int8": "int8"}.get(
            path, path
        )
        name = f"engine_{path.replace('-', '_')}"
        # each engine owns its bundle (casts are in place), loaded as the worker loads it (encoder_impl); the
        # pipelines above keep transformers' encoder
        b = load_bundle(bundle.path, verify=False, encoder_impl=settings.encoder_impl)
        started = time.perf_counter()
        engine = Engine(
            b,
            Placement(torch.device("cpu"), precision),
            token_budget=settings.token_budget,
            pack_spread=settings.pack_spread,
            max_batch_docs=settings.max_batch_docs,
            sort_window=settings.sort_window,
            int8_fp32_modules=settings.int8_fp32_modules,
            compile=path.endswith("-compiled"),
            backend=backend,
            onnx_cache=settings.onnx_cache_dir,
            ort_spinning=settings.ort_spinning,
            cpu_fusion=settings.cpu_fusion,
            row_buckets=settings.row_buckets,
        )
        engine.score(texts[:64], ["news"] * len(texts[:64]))
        setup[name] = time.perf_counter() - started
        # one untimed pass: oneDNN builds its kernels per shape on first use (AMX/bf16 most of all)
        engine.score(texts, ["news"] * len(texts))
        engines[path.replace("-", "_")] = engine

        def run_engine(e: Engine = engine) -> tuple[int, int]:
            e.score(texts, ["news"] * len(texts))
            return len(texts), e.last_stats.tokens

        contestants[name] = run_engine

    best: dict[str, float] = {}
    done: dict[str, tuple[int, int]] = {}
    ceilings: list[float] = []
    medians: list[float] = []
    for _ in range(repeats):
        gemm_best, gemm_median = gemm_timings(cfg.hidden_size, cfg.intermediate_size, threads, repeats=10)
        ceilings.append(gemm_best)
        medians.append(gemm_median)
        for name, fn in contestants.items():
            t = time.perf_counter()
            done[name] = fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    ceiling, ceiling_median = max(ceilings), statistics.median(medians)
    result: dict[str, Any] = {
        "documents": len(texts),
        "mean_tokens_per_doc": round(mean_seq, 1),
        "model_version": bundle.version,
        "torch_threads": threads,
        "repeats": repeats,
        "cpu": cpu_summary(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gemm_fp32_gflops": round(ceiling, 1),
        "gemm_fp32_gflops_median": round(ceiling_median, 1),
        "gemm_fp32_gflops_per_round": [round(c, 1) for c in ceilings],
        "gemm_int8_dynamic_gflops": round(int8_gemm, 1) if int8_gemm else None,
        "gemm_int8_over_fp32": round(int8_gemm / ceiling, 2) if int8_gemm else None,
        "encoder_gflop_per_token": round(flops_tok / 1e9, 5),
        "runs": {},
    }
    for name, seconds in best.items():
        docs, tokens = done[name]
        tok_s = tokens / seconds
        run: dict[str, Any] = {
            "documents": docs,
            "seconds": round(seconds, 3),
            "docs_per_s": round(docs / seconds, 1),
            "tokens_per_s": round(tok_s, 0),
            "share_of_fp32_gemm_ceiling": round(tok_s * flops_tok / 1e9 / ceiling, 3),
        }
        if name in setup:
            stats = engines[name.removeprefix("engine_")].last_stats
            run["padding_share"] = round(1 - stats.tokens / max(stats.padded_tokens, 1), 3)
            run["setup_seconds"] = round(setup[name], 1)
            run["cpu_fusion"] = engines[name.removeprefix("engine_")].fusion
            run["row_buckets"] = engines[name.removeprefix("engine_")].row_buckets
        result["runs"][name] = run
        log.info("%s: %.1f docs/s", name, docs / seconds)

    fp32 = result["runs"]["engine_fp32"]["docs_per_s"]
    result["speedup_vs_naive"] = {
        k: round(v["docs_per_s"] / result["runs"]["hf_pipeline_naive"]["docs_per_s"], 2)
        for k, v in result["runs"].items()
    }
    result["speedup_vs_engine_fp32"] = {k: round(v["docs_per_s"] / fp32, 2) for k, v in result["runs"].items()}
    result["accuracy"] = accuracy_change(engines, seed, max_per_set)
    if score_cli:
        result["score_cli"] = score_cli_run(settings, texts, result)
        # a longer file spreads the process's start over more documents; the pipelines' rates are those measured
        # above (on the first --n texts, the naive loop on --naive-n of them), the texts the first N of the same set
        by_size = {len(texts): result["score_cli"]}
        for size in sorted(set(score_sizes) - {len(texts)}):
            more = [r["text"] for r in read_split(seed, "fin_tweets_topic", "test", size)]
            by_size[len(more)] = score_cli_run(settings, more, result)
        result["score_cli_by_documents"] = {str(k): v for k, v in sorted(by_size.items())}
    return result


def accuracy_change(engines: dict[str, Any], seed: Path, max_per_set: int, split: str = "test") -> dict[str, Any]:
    """Accuracy of each engine on every seed set's ``split``, its change in points vs the ``fp32`` engine and the
    share of predictions that agree with it (``split="dev"`` for tuning, e.g. scripts/int8_sensitivity.py)."""
    out: dict[str, Any] = {}
    for dataset, (task, mapping) in ACCURACY_SETS.items():
        if not (seed / dataset / f"{split}.csv").is_file():
            continue
        rows = read_split(seed, dataset, split, max_per_set)
        channel = "news" if task.startswith("news") else "customer_service"
        kind = "sentiment" if task.endswith("sentiment") else "topic"
        gold = [mapping.get(r["label"], r["label"]) for r in rows]
        preds = {}
        for precision, engine in engines.items():
            scores = engine.score([r["text"] for r in rows], [channel] * len(rows))
            preds[precision] = [getattr(s, kind).label for s in scores]
        ref_acc = sum(p == g for p, g in zip(preds["fp32"], gold, strict=True)) / len(rows)
        entry: dict[str, Any] = {"task": task, "n": len(rows), "accuracy_fp32": round(ref_acc, 4)}
        for precision, labels in preds.items():
            if precision == "fp32":
                continue
            acc = sum(p == g for p, g in zip(labels, gold, strict=True)) / len(rows)
            agree = sum(a == b for a, b in zip(labels, preds["fp32"], strict=True)) / len(rows)
            entry[f"accuracy_{precision}"] = round(acc, 4)
            entry[f"accuracy_delta_points_{precision}"] = round(100 * (acc - ref_acc), 2)
            entry[f"agreement_with_fp32_{precision}"] = round(agree, 4)
        out[dataset] = entry
    return out


def score_cli_run(settings: EngineSettings, texts: list[str], result: dict[str, Any]) -> dict[str, Any]:
    """``riskstream score`` as a subprocess on the same texts: wall time including process start."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = Path(tmp) / "in.csv", Path(tmp) / "out.jsonl"
        with inp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text"])
            writer.writerows([t] for t in texts)
        cmd = [
            str(Path(sys.executable).parent / "riskstream"),
            "score",
            "--input",
            str(inp),
            "--output",
            str(outp),
            "--channel",
            "news",
            "--json",
            "--precision",
            settings.precision,
            "--backend",
            settings.backend,
            "--data-dir",
            str(settings.data_dir),
            "--torch-threads",
            str(settings.torch_threads),
            "--encoder-impl",
            settings.encoder_impl,
        ]
        if settings.bundle is not None:
            cmd += ["--bundle", str(settings.bundle)]
        if not settings.cpu_fusion:
            cmd.append("--no-cpu-fusion")
        # the packing fields only when set: otherwise `score` packs a file as it does for a user (its offline profile)
        for name in ("row_buckets", "sort_window", "max_batch_docs", "pack_spread", "token_budget"):
            if name in settings.model_fields_set:
                cmd += ["--" + name.replace("_", "-"), str(getattr(settings, name))]
        if settings.int8_fp32_modules:  # the same quantized graph as the engine runs above (and its export cache)
            cmd += ["--int8-fp32-modules", json.dumps(list(settings.int8_fp32_modules))]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        t = time.perf_counter()
        done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
    inside = float(json.loads(done.stdout)["seconds"])  # loading the model and scoring, as the command timed them
    docs_s = len(texts) / wall
    runs = result["runs"]
    return {
        "precision": settings.precision,
        "backend": settings.backend,
        "documents": len(texts),
        "wall_seconds_with_process_start": round(wall, 2),
        "seconds_loading_and_scoring": round(inside, 2),
        "seconds_starting_and_exiting": round(wall - inside, 2),
        "docs_per_s": round(docs_s, 1),
        "x_naive_pipeline": round(docs_s / runs["hf_pipeline_naive"]["docs_per_s"], 2),
        "x_batched_pipeline": round(docs_s / runs["hf_pipeline_batch32"]["docs_per_s"], 2),
    }


def plot_inference(result: dict[str, Any], path: Path) -> None:
    """Each path's share of the FP32 GEMM ceiling; beside it, when the run timed `riskstream score` on several file
    sizes, its speed-up over the two pipelines against the file's size (the start-up spread over more documents)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["runs"])
    shares = [100 * result["runs"][k]["share_of_fp32_gemm_ceiling"] for k in names]
    by_size = result.get("score_cli_by_documents") or {}
    fig, axes = plt.subplots(1, 2 if len(by_size) > 1 else 1, figsize=(13 if len(by_size) > 1 else 8, 4), squeeze=False)
    ax = axes[0][0]
    ax.barh(names, shares, color="tab:blue")
    ax.axvline(60, color="tab:orange", linestyle="--", label="FP32 target 60%")
    ax.axvline(150, color="tab:red", linestyle="--", label="fast-path target 150%")
    ax.set_xlabel("% of this machine's FP32 GEMM ceiling (non-padding tokens)")
    ax.set_title(
        f"{result['documents']} docs, {result['mean_tokens_per_doc']} tokens/doc, {result['torch_threads']} threads"
    )
    ax.legend()
    if len(by_size) > 1:
        ax = axes[0][1]
        sizes = [int(k) for k in by_size]
        ax.plot(sizes, [v["x_naive_pipeline"] for v in by_size.values()], "o-", label="x naive pipeline")
        ax.plot(sizes, [v["x_batched_pipeline"] for v in by_size.values()], "s-", label="x batch-32 pipeline")
        ax.axhline(5, color="tab:blue", linestyle=":", label="target 5x naive")
        ax.axhline(4, color="tab:orange", linestyle=":", label="target 4x batched")
        ax.set_xlabel("documents in the file")
        ax.set_ylabel("speed-up, process start included")
        ax.set_title("riskstream score")
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


@click.command("inference")
@click.option("--n", "n", default=2000, show_default=True, help="Test texts (fin_tweets_topic test).")
@click.option("--max-per-set", default=1000, show_default=True, help="Texts per seed test set for accuracy change.")
@click.option(
    "--fast-path",
    "fast_paths",
    multiple=True,
    default=("int8", "bf16"),
    show_default=True,
    type=click.Choice(["int8", "bf16", "fp32-compiled", "bf16-compiled", "onnx-fp32", "onnx-int8"]),
    help="Fast paths to measure (repeatable). fp32-compiled, bf16-compiled: the engine under torch.compile; "
    "onnx-fp32 and onnx-int8: the onnxruntime backend (compile and export times are reported as setup_seconds; "
    "the ONNX export is cached in the data dir, so a second run loads it).",
)
@click.option("--naive-n", type=int, default=None, help="Cap the naive per-document loop (default: all N).")
@click.option(
    "--repeats",
    type=click.IntRange(1, 10),
    default=2,
    show_default=True,
    help="Time every path this many times and keep its best (the same for every path).",
)
@click.option("--score-cli/--no-score-cli", default=True, help="Also time `riskstream score` as a subprocess.")
@click.option(
    "--score-n",
    "score_sizes",
    type=click.IntRange(1),
    multiple=True,
    help="Also time `riskstream score` on the first N fin_tweets_topic test texts (repeatable; --n's texts always).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a PNG chart.")
@with_settings(EngineSettings)
def bench_inference(  # noqa: PLR0917 - click passes options by keyword
    n: int,
    max_per_set: int,
    fast_paths: tuple[str, ...],
    naive_n: int | None,
    repeats: int,
    score_cli: bool,
    score_sizes: tuple[int, ...],
    as_json: bool,
    plot: Path | None,
    settings: EngineSettings,
) -> None:
    """Naive HF pipeline vs batched pipeline vs the engine (FP32 and fast paths), and the FP32 GEMM ceiling."""
    result = run_inference_bench(
        settings,
        n,
        max_per_set=max_per_set,
        fast_paths=list(fast_paths),
        naive_n=naive_n,
        score_cli=score_cli,
        repeats=repeats,
        score_sizes=score_sizes,
    )
    if plot is not None:
        plot_inference(result, plot)
    if as_json:
        echo_json(result)
    else:
        for name, run in result["runs"].items():
            click.echo(
                f"{name:22s} {run['docs_per_s']:8.1f} docs/s {run['tokens_per_s']:9.0f} tok/s "
                f"{100 * run['share_of_fp32_gemm_ceiling']:6.1f}% of FP32 GEMM"
            )
        click.echo(json.dumps(result["accuracy"], indent=1))


# ---- end to end ----------------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) the process ``pid`` has used so far (Linux /proc; None elsewhere or once gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_window(
    samples: Sequence[tuple[float, int]], n: int, lo: float = 0.1, hi: float = 0.9
) -> tuple[int, int] | None:
    """Indices of the first sample at which ``lo`` of the ``n`` documents were searchable and of the first at which
    ``hi`` were; None when fewer than two refreshes fell between them (too short a run to tell a rate from the
    refresh steps)."""
    first_lo = next((i for i, (_, c) in enumerate(samples) if c >= lo * n), None)
    first_hi = next((i for i, (_, c) in enumerate(samples) if c >= hi * n), None)
    if first_lo is None or first_hi is None:
        return None
    steps = len({c for _, c in samples[first_lo : first_hi + 1]})
    if steps < 3 or samples[first_hi][0] <= samples[first_lo][0]:
        return None
    return first_lo, first_hi


def steady_rate(samples: Sequence[tuple[float, int]], n: int, lo: float = 0.1, hi: float = 0.9) -> float | None:
    """Documents/s becoming searchable while the stream is in full flow: between the first sample at which ``lo``
    of the ``n`` documents were searchable and the first at which ``hi`` were.

    ``samples`` are (seconds since the first produce, documents searchable). The whole run's rate (``n`` over the
    time to the last document) also counts the pipeline's fixed latency once, mostly the index's 1 s refresh
    interval, which a stream pays per document in latency, not in throughput (measured: 0-12% of the rate on runs
    of 2,000-4,000 documents). None when fewer than two refreshes fell between ``lo`` and ``hi``."""
    window = steady_window(samples, n, lo, hi)
    if window is None:
        return None
    (t_a, c_a), (t_b, c_b) = samples[window[0]], samples[window[1]]
    return (c_b - c_a) / (t_b - t_a)


def mean_rate(n: int, seconds: Sequence[float]) -> float:
    """Documents/s over several timed passes of ``n`` documents each: all the documents over all the time.

    This is how a sustained rate averages a machine's speed over its run, so it is the reference the end-to-end
    share divides by. The best pass (the usual micro-benchmark figure) picks the machine's fastest moment: on a
    shared VM one engine's passes over the same texts were measured 1.6x apart minutes apart."""
    if not seconds or any(t <= 0 for t in seconds):
        raise ValueError("need at least one pass, each with a positive time")
    return n * len(seconds) / sum(seconds)


class _Standalone:
    """The engine alone, same settings as the worker (its oneDNN kernel cache cap too, which ``bench e2e`` sets for
    its own process before torch loads), in the benchmark's process: the reference for the end-to-end
    share. One untimed pass over the texts first (it builds oneDNN's kernels for each batch shape, as the worker's
    warm-up does); then timed passes before the worker starts and again after the sustained phase (the worker
    idle), so the reference sees the machine at both ends of the phase it is compared with. It runs on ``threads``
    torch threads, a worker's (several workers: one of these per process, see :class:`_ParallelStandalone`)."""

    def __init__(self, settings: EngineSettings, texts: list[str], threads: int) -> None:
        import torch

        from inference.engine import build_engine

        torch.set_num_threads(threads)
        self.threads = threads
        self.texts = texts
        self.engine: Any = build_engine(_load_bundle(settings, settings.encoder_impl), settings)
        self.engine.score(texts, ["news"] * len(texts))
        self.seconds: list[float] = []

    def timed_pass(self) -> None:
        _, seconds = _timed(lambda: self.engine.score(self.texts, ["news"] * len(self.texts)))
        self.seconds.append(seconds)

    def close(self) -> None:
        import gc

        self.engine = None
        gc.collect()

    def passes_docs_per_s(self) -> list[float]:
        return [round(len(self.texts) / t, 1) for t in self.seconds]

    def docs_per_s(self) -> float:
        return mean_rate(len(self.texts), self.seconds)


def _reference_process(settings: EngineSettings, texts: list[str], threads: int, barrier: Any, conn: Any) -> None:
    """One engine of a parallel reference: load and warm, then one timed pass per request, started together with
    the other processes' at the barrier; the pass's seconds go back through ``conn``."""
    reference = _Standalone(settings, texts, threads)
    while conn.recv() == "pass":
        barrier.wait()
        reference.timed_pass()
        conn.send(reference.seconds[-1])
    reference.close()


class _ParallelStandalone:
    """The engine alone in as many processes as there are workers, each on the workers' thread count and the same
    texts, passes started together: what the machine scores with the workers' layout and nothing else running.
    A pass's rate is all the processes' documents over the slowest one's time. (One process on the threads of all
    the workers together would be a different layout, which scales differently: the workers' share would measure
    threads against processes, not the stream's cost.) Between passes the processes idle, holding their models,
    so the benchmark needs their memory beside the workers'."""

    def __init__(self, settings: EngineSettings, texts: list[str], threads: int, processes: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # torch and fork do not mix
        self.threads = threads
        self.processes = processes
        self.n = len(texts) * processes
        self.seconds: list[float] = []
        # held for the processes' lifetime: a barrier collected here unlinks its semaphore before they attach to it
        self._barrier = ctx.Barrier(processes)
        self._conns = []
        self._procs = []
        for _ in range(processes):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_reference_process, args=(settings, texts, threads, self._barrier, theirs), daemon=True
            )
            proc.start()
            self._conns.append(ours)
            self._procs.append(proc)

    def timed_pass(self) -> None:
        for conn in self._conns:
            conn.send("pass")
        took = []
        for conn, proc in zip(self._conns, self._procs, strict=True):
            # loading and warming come first: allow for a slow machine, but not for a dead process
            try:
                while not conn.poll(1.0):
                    if not proc.is_alive():
                        raise EOFError
                took.append(float(conn.recv()))
            except (EOFError, OSError) as exc:
                proc.join(5)
                raise click.ClickException(
                    f"a reference engine process stopped (exit code {proc.exitcode}); its error is above"
                ) from exc
        self.seconds.append(max(took))

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs, strict=True):
            if proc.is_alive():
                conn.send("close")
        for proc in self._procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()

    def passes_docs_per_s(self) -> list[float]:
        return [round(self.n / t, 1) for t in self.seconds]

    def docs_per_s(self) -> float:
        return mean_rate(self.n, self.seconds)


STALL_S = 300.0  # the end-to-end benchmark gives up when nothing new became searchable for this long


def group_members(admin: Any, group_id: str) -> tuple[str, int]:
    """The consumer group's state and how many of its members hold partitions (kafka-python's describe_groups)."""
    info = admin.describe_groups([group_id])[group_id]
    holding = [
        m
        for m in info.get("members") or []
        if any(a.get("partitions") for a in (m.get("member_assignment") or {}).get("assigned_partitions") or [])
    ]
    return str(info.get("group_state") or ""), len(holding)


def run_e2e_bench(
    settings: WorkerSettings,
    n: int,
    latency_seconds: float,
    warmup_docs: int = -1,
    workers: int = 1,
    *,
    worker_log_path: Path | None = None,
) -> dict[str, Any]:
    """Sustained rate and latency from produce to searchable, against the configured Kafka and Elasticsearch.

    ``warmup_docs`` documents (default -1: the ``n`` texts once) go through the whole path before the timed phases,
    as the standalone engine's reference rate is timed after a first pass: the worker's first pass over new batch
    shapes builds oneDNN's kernels for them, and Elasticsearch and Kafka warm up too.

    ``workers`` worker processes share the group (each with the configured torch threads), on a topic with three
    partitions per worker, and the timed phases start once every one holds its partitions. The standalone reference
    then runs as many engine processes, each on a worker's threads, over the same texts at the same time.

    The workers' output goes to ``worker_log_path`` (kept), or else to a temporary file that is removed when the run
    succeeds and kept, and named in the error, when it fails."""
    if workers < 1:
        raise click.BadParameter(f"needs at least one worker, got {workers}", param_hint="--workers")
    from elasticsearch import ApiError
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient

    from riskstream.es import make_client
    from riskstream.kafka_client import client_options, security_options
    from schemas.topics import ensure_topics

    run_id = uuid.uuid4().hex[:8]
    s = settings.model_copy(
        update={
            "topic_raw": f"bench-raw-{run_id}",
            "topic_scored": f"bench-scored-{run_id}",
            "topic_dlq": f"bench-dlq-{run_id}",
            "es_docs_alias": f"bench-docs-{run_id}",
            "es_alerts_alias": f"bench-alerts-{run_id}",
            "group_id": f"bench-{run_id}",
        }
    )
    seed = s.require_seed_data()
    texts = [r["text"] for r in read_split(seed, "fin_tweets_topic", "test", n)]
    reference: _Standalone | _ParallelStandalone = (
        _Standalone(s, texts, s.torch_threads)
        if workers == 1
        else _ParallelStandalone(s, texts, s.torch_threads, workers)
    )
    reference.timed_pass()
    # three partitions per worker whatever the settings say: runs stay comparable, and the workers' shares equal
    partitions = 3 * workers
    ensure_topics(
        s.kafka_bootstrap,
        [s.topic_raw, s.topic_scored, s.topic_dlq],
        partitions=partitions,
        replication=s.kafka_topic_replication,
        security=security_options(s),
    )
    es = make_client(s)
    producer = KafkaProducer(**client_options(s), acks="all", linger_ms=5)

    def send(doc_id: str, text: str) -> None:
        body = {"id": doc_id, "channel": "news", "source": "bench", "text": text}
        producer.send(s.topic_raw, key=doc_id.encode(), value=json.dumps(body).encode())

    shards_ready = False

    def count() -> int:
        nonlocal shards_ready
        if not shards_ready:
            # the worker creates the index; its alias exists a moment before the primary shard has started, and a
            # search in between is answered 503 (no shard available), so wait for the shard first
            if not es.indices.exists_alias(name=s.es_docs_alias):
                return 0
            health = es.cluster.health(index=s.es_docs_alias, wait_for_status="yellow", timeout="60s")
            if health.get("timed_out"):
                return 0
            shards_ready = True
        try:
            return int(es.count(index=s.es_docs_alias)["count"])
        except ApiError as exc:
            # seen once after the health check passed: search_phase_execution_exception, a shard not yet usable;
            # nothing is searchable there yet, so ask again at the next poll
            if exc.meta.status == 503:
                log.info("count answered 503 (%s); polling again", exc.message)
                return 0
            raise

    admin = KafkaAdminClient(**client_options(s))  # before the workers start: nothing to stop if it fails
    worker_log: IO[bytes]
    if worker_log_path is not None:
        worker_log = worker_log_path.open("wb")
    else:
        worker_log = tempfile.NamedTemporaryFile(prefix="riskstream-bench-worker-", suffix=".log", delete=False)  # noqa: SIM115
    succeeded = False
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(workers):
        env = dict(os.environ, HF_HUB_OFFLINE="1", **s.to_env())
        if s.metrics_port > 0:
            env["RISKSTREAM_METRICS_PORT"] = str(s.metrics_port + i)  # one port per process
        procs.append(
            subprocess.Popen(
                [str(Path(sys.executable).parent / "riskstream"), "worker"],
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
        )
    rss_peaks = [0.0] * workers
    rss_total_peak = 0.0
    stop_rss = threading.Event()

    def watch_rss() -> None:
        nonlocal rss_total_peak
        while not stop_rss.wait(0.5):
            now = [_rss_mb(p.pid) or 0.0 for p in procs]
            rss_peaks[:] = [max(a, b) for a, b in zip(rss_peaks, now, strict=True)]
            rss_total_peak = max(rss_total_peak, sum(now))

    def check_alive(during: str) -> None:
        for p in procs:
            if p.poll() is not None:
                raise click.ClickException(f"a worker stopped {during} (exit {p.returncode}); see {worker_log.name}")

    def workers_cpu() -> float | None:
        seconds = [_cpu_seconds(p.pid) for p in procs]
        return None if any(x is None for x in seconds) else sum(x for x in seconds if x is not None)

    threading.Thread(target=watch_rss, daemon=True).start()
    try:
        send("warmup", "warm up the worker")
        producer.flush()
        deadline = time.monotonic() + 300
        while count() < 1:
            check_alive("before it scored a first document")
            if time.monotonic() > deadline:
                raise click.ClickException(f"the worker did not start; see {worker_log.name}")
            time.sleep(0.5)
        # every worker holds partitions before the warm-up, so each warms its own kernels and no rebalance falls
        # into a timed phase
        while group_members(admin, s.group_id) != ("Stable", workers):
            check_alive("while the group formed")
            if time.monotonic() > deadline:
                state = group_members(admin, s.group_id)
                raise click.ClickException(
                    f"the group did not settle with {workers} members holding partitions (now {state}); "
                    f"see {worker_log.name}"
                )
            time.sleep(0.5)
        warm = n if warmup_docs < 0 else warmup_docs
        if warm:
            for i in range(warm):
                send(f"warm-{i}", texts[i % len(texts)])
            producer.flush()
            while count() < warm + 1:
                check_alive("during the warm-up")
                time.sleep(0.2)
        # 1. sustained throughput: produce all at once, follow the searchable count until all are there
        t0 = time.perf_counter()
        for i, text in enumerate(texts):
            send(f"thr-{i}", text)
        producer.flush()
        samples: list[tuple[float, int]] = []
        worker_cpu: list[float | None] = []
        progress_at = (time.monotonic(), -1)
        while True:
            seen_now = count() - (warm + 1)
            samples.append((time.perf_counter() - t0, seen_now))
            worker_cpu.append(workers_cpu())
            if seen_now >= n:
                break
            if seen_now > progress_at[1]:
                progress_at = (time.monotonic(), seen_now)
            elif time.monotonic() - progress_at[0] > STALL_S:
                raise click.ClickException(
                    f"no document became searchable for {STALL_S:.0f} s ({seen_now} of {n}); see {worker_log.name}"
                )
            check_alive("during the throughput phase")
            time.sleep(0.2)
        whole_run = n / samples[-1][0]
        window = steady_window(samples, n)
        steady = steady_rate(samples, n)
        sustained = steady if steady is not None else whole_run
        cores: float | None = None
        if window is not None:
            cpu_a, cpu_b = worker_cpu[window[0]], worker_cpu[window[1]]
            if cpu_a is not None and cpu_b is not None:
                cores = (cpu_b - cpu_a) / (samples[window[1]][0] - samples[window[0]][0])
        reference.timed_pass()  # the worker idles now: the machine's speed at the phase's other end
        reference.close()
        standalone = reference.docs_per_s()
        # 2. latency at half that rate
        rate = sustained / 2
        m = max(10, int(rate * latency_seconds))
        produced: dict[str, float] = {}
        seen: dict[str, float] = {}
        done = threading.Event()

        def poll_visible() -> None:
            # ask only for documents produced and not seen yet (an ids query over the in-flight window): the poll
            # stays cheap however many have arrived, since it shares the CPU with the worker and Elasticsearch
            while not done.is_set():
                pending = [k for k in list(produced) if k not in seen]
                if not pending:
                    if len(seen) >= m:
                        return
                    time.sleep(0.01)
                    continue
                resp = es.search(
                    index=s.es_docs_alias, query={"ids": {"values": pending}}, size=len(pending), source=False
                )
                now = time.perf_counter()
                for hit in resp["hits"]["hits"]:
                    seen.setdefault(hit["_id"], now)
                if len(seen) >= m:
                    return
                time.sleep(0.05)

        poller = threading.Thread(target=poll_visible, daemon=True)
        poller.start()
        start = time.perf_counter()
        for i in range(m):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            doc_id = f"lat-{i}"
            produced[doc_id] = time.perf_counter()
            send(doc_id, texts[i % len(texts)])
            producer.flush()
        poller.join(timeout=60)
        done.set()
        lat = sorted(seen[k] - produced[k] for k in produced if k in seen)
        rss_now = [_rss_mb(p.pid) or 0.0 for p in procs]
        members = group_members(admin, s.group_id)
        succeeded = True
    finally:
        reference.close()  # again after the sustained phase is harmless; on an error it stops the processes
        stop_rss.set()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        producer.close()
        for alias in (s.es_docs_alias, s.es_alerts_alias):
            if es.indices.exists_alias(name=alias):
                for index in es.indices.get_alias(name=alias):
                    es.options(ignore_status=404).indices.delete(index=index)
            es.options(ignore_status=404).indices.delete_index_template(name=alias)
        worker_log.close()
        if succeeded and worker_log_path is None:
            Path(worker_log.name).unlink(missing_ok=True)
        admin.delete_topics([s.topic_raw, s.topic_scored, s.topic_dlq])
        admin.close()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    return {
        "documents": n,
        "warmup_documents": warm,
        "workers": workers,
        "partitions": partitions,
        "group_at_end": {"state": members[0], "members_with_partitions": members[1]},
        "engine_standalone_processes": workers,
        "engine_standalone_threads": reference.threads,
        "engine_standalone_onednn_cache_capacity": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
        "engine_standalone_docs_per_s": round(standalone, 1),
        "engine_standalone_passes_docs_per_s": reference.passes_docs_per_s(),
        "share_of_standalone": round(sustained / standalone, 3),
        "share_of_standalone_best_pass": round(sustained / max(reference.passes_docs_per_s()), 3),
        "sustained_docs_per_s": round(sustained, 1),
        "sustained_method": "steady" if steady is not None else "whole_run",
        "whole_run_docs_per_s": round(whole_run, 1),
        "share_of_standalone_whole_run": round(whole_run / standalone, 3),
        "latency_rate_docs_per_s": round(rate, 1),
        "latency_documents": m,
        "latency_seen": len(lat),
        "p50_produce_to_searchable_s": round(pct(0.5), 3),
        "p95_produce_to_searchable_s": round(pct(0.95), 3),
        "mean_produce_to_searchable_s": round(statistics.fmean(lat), 3) if lat else None,
        "worker_cpu_cores_sustained": round(cores, 2) if cores is not None else None,
        "worker_rss_mb": round(max(rss_now), 1),
        "worker_rss_peak_mb": round(max(rss_peaks), 1),
        "workers_rss_peak_total_mb": round(rss_total_peak, 1),
        "precision": settings.precision,
        "backend": settings.backend,
        "row_buckets": settings.row_buckets,
        "onednn_cache_capacity": settings.onednn_cache_capacity,
    }


@click.command("e2e")
@click.option("--n", "n", default=2000, show_default=True, help="Documents for the throughput phase.")
@click.option("--latency-seconds", default=20.0, show_default=True, help="Duration of the half-rate phase.")
@click.option(
    "--warmup-docs",
    default=-1,
    show_default=True,
    help="Documents through the whole path before timing (-1: the N texts once, as the standalone reference is "
    "timed after a first pass; 0: none).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes in the group, each with --torch-threads threads; the topic gets three partitions per "
    "worker, and the standalone reference runs as many engine processes at once.",
)
@click.option(
    "--worker-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Keep the workers' output in this file (with --log-level DEBUG it has one line per micro-batch). "
    "Without it the output goes to a temporary file, removed when the run succeeds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@with_settings(WorkerSettings)
def bench_e2e(  # noqa: PLR0917 - click passes options by keyword
    n: int,
    latency_seconds: float,
    warmup_docs: int,
    workers: int,
    worker_log: Path | None,
    as_json: bool,
    settings: WorkerSettings,
) -> None:
    """Produce -> worker(s) -> searchable in ES against the configured Kafka and ES (fresh topics and alias)."""
    from inference.cli import apply_onednn_cache_capacity

    # the engine alone runs in this process: with the workers' kernel cache, as it is the workers' engine
    apply_onednn_cache_capacity(settings, os.environ)
    result = run_e2e_bench(settings, n, latency_seconds, warmup_docs, workers, worker_log_path=worker_log)
    if as_json:
        echo_json(result)
    else:
        for k, v in result.items():
            click.echo(f"{k:32s} {v}")

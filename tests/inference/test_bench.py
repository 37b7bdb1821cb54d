"""`riskstream bench inference` end to end on a small scale: every path measured side by side in one run, the
accuracy comparison on every seed test set, the `riskstream score` subprocess and the plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from riskstream.hardware import has_native_bf16

pytestmark = pytest.mark.slow


def _seed_data() -> Path:
    env = os.environ.get("RISKSTREAM_SEED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def test_bench_inference_measures_every_path_and_the_score_cli(bundle_v1: tuple[Path, str], tmp_path: Path) -> None:
    from inference.bench import bench_inference

    plot = tmp_path / "bench.png"
    args = [
        *("--n", "40", "--naive-n", "4", "--max-per-set", "6", "--repeats", "2", "--score-n", "60"),
        *("--fast-path", "onnx-int8", "--fast-path", "int8", "--fast-path", "bf16"),
        *("--bundle", str(bundle_v1[0]), "--data-dir", str(tmp_path / "data")),
        *("--seed-data", str(_seed_data()), "--torch-threads", "2"),
        *("--backend", "onnxruntime", "--precision", "int8", "--json", "--plot", str(plot)),
        *("--int8-fp32-modules", '["encoder.layer.?.intermediate.dense"]'),
    ]
    result = CliRunner().invoke(bench_inference, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["repeats"] == 2
    paths = (
        "hf_pipeline_naive",
        "hf_pipeline_batch32",
        "engine_fp32",
        "engine_onnx_int8",
        "engine_int8",
        "engine_bf16",
    )
    assert set(out["runs"]) == set(paths)
    for name, run in out["runs"].items():
        assert run["docs_per_s"] > 0 and 0 < run["share_of_fp32_gemm_ceiling"] < 10, name
    assert out["runs"]["engine_onnx_int8"]["documents"] == 40
    assert 0 < out["gemm_fp32_gflops_median"] <= out["gemm_fp32_gflops"] and out["gemm_int8_over_fp32"] > 0
    # timed in rounds, the ceiling once per round: the shares are against the best round's ceiling
    assert len(out["gemm_fp32_gflops_per_round"]) == 2 and out["gemm_fp32_gflops"] == max(
        out["gemm_fp32_gflops_per_round"]
    )
    # the report names the CPU features that decide which path is fast
    assert out["cpu"]["native_bf16"] == has_native_bf16() and isinstance(out["cpu"]["features"], list)
    # accuracy change of each fast path on every seed test set, against fp32 on the same rows
    sets = ("financial_phrasebank", "fin_tweets_sentiment", "fin_tweets_topic", "banking77", "cs_sentiment")
    assert set(out["accuracy"]) == set(sets)
    for entry in out["accuracy"].values():
        assert entry["n"] == 6
        assert 0.0 <= entry["agreement_with_fp32_onnx_int8"] <= 1.0
        assert "accuracy_delta_points_int8" in entry and "agreement_with_fp32_bf16" in entry
    # the score CLI ran as a subprocess on the same texts with the configured backend, and wrote every document
    assert out["score_cli"]["backend"] == "onnxruntime" and out["score_cli"]["documents"] == 40
    assert out["score_cli"]["docs_per_s"] > 0
    # the wall time splits into what the command timed itself and the process's start and exit around it
    cli = out["score_cli"]
    assert 0 < cli["seconds_loading_and_scoring"] < cli["wall_seconds_with_process_start"]
    assert cli["seconds_starting_and_exiting"] == pytest.approx(
        cli["wall_seconds_with_process_start"] - cli["seconds_loading_and_scoring"], abs=0.02
    )
    # and on a longer file (--score-n), beside the --n texts' run: the same command, each size its own process
    assert list(out["score_cli_by_documents"]) == ["40", "60"]
    assert out["score_cli_by_documents"]["40"] == cli
    assert out["score_cli_by_documents"]["60"]["documents"] == 60
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the engine and the score CLI ran the same quantized graph (layers kept in fp32 included): one int8 export
    assert len(list((tmp_path / "data" / "cache" / "onnx").glob("*-int8-*.onnx"))) == 1

"""``riskstream score``: an analyst's file in, one scored line per row out, in order; a bad file is refused with the
row to fix and leaves no output behind (nor touches an earlier one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from inference.cli import score

pytestmark = pytest.mark.slow


def _score(bundle: Path, tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        score, [*args, "--bundle", str(bundle), "--data-dir", str(tmp_path / "data"), "--torch-threads", "1", "--json"]
    )
    return result.exit_code, result.output


def test_a_csv_is_scored_in_input_order_keeping_ids_and_labels(bundle_v1: tuple[Path, str], tmp_path: Path) -> None:
    bundle = bundle_v1[0]
    version = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["version"]
    src = tmp_path / "docs.csv"
    src.write_text(
        "id,channel,text,label\n"
        "n1,news,Shares of Acme fell sharply after the profit warning,negative\n"
        "c1,customer_service,My card was charged twice for one purchase,\n"
        ",news,Central bank keeps rates on hold,neutral\n",
        encoding="utf-8",
    )
    out = tmp_path / "scored.jsonl"
    code, output = _score(bundle, tmp_path, "--input", str(src), "--output", str(out))
    assert code == 0, output
    assert json.loads(output[output.index("{") :])["documents"] == 3
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["n1", "c1", "3"]  # a row without an id gets its row number
    assert [r["channel"] for r in rows] == ["news", "customer_service", "news"]
    assert [r.get("label") for r in rows] == ["negative", "", "neutral"]
    for r in rows:
        assert r["model_version"] == version
        assert r["sentiment"]["label"] in ("negative", "neutral", "positive")
        assert 0.0 <= r["risk_score"] <= 1.0 and 0.0 <= r["uncertainty"] <= 1.0
    assert rows[1]["topic"]["label"].startswith("intent-")  # the customer-service head served the ticket
    assert rows[0]["topic"]["label"].startswith("news-topic-")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("docs.jsonl", '{"text": "Acme beats estimates"}\n{"text": "Rates hold"}\n{"text": "  "}\n',
         "row 3: text is missing or empty"),
        ("docs.jsonl", '{"text": "Acme beats estimates"}\n{"text": "Rates hold", "channel": "fax"}\n',
         "row 2: unknown channel 'fax'"),
        ("docs.jsonl", '{"text": "Acme beats estimates"}\nnot json\n', "docs.jsonl:2: not JSON"),
        ("docs.csv", "body\nAcme beats estimates\n", "a CSV needs a 'text' column"),
        ("docs.json", '[{"text": "Acme"}]', "unsupported input format '.json' (use .csv or .jsonl)"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_with_the_row_and_leaves_earlier_output_alone(
    bundle_v1: tuple[Path, str], tmp_path: Path, name: str, content: str, message: str
) -> None:
    src = tmp_path / name
    src.write_text(content, encoding="utf-8")
    out = tmp_path / "scored.jsonl"
    out.write_text("yesterday's results\n", encoding="utf-8")
    code, output = _score(bundle_v1[0], tmp_path, "--input", str(src), "--output", str(out), "--channel", "news")
    assert code == 1
    assert message in output
    assert out.read_text(encoding="utf-8") == "yesterday's results\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("scored")) == ["scored.jsonl"]


def test_a_file_in_an_unknown_format_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    """The bundle here does not exist: the answer is about the file, so it came before any loading."""
    src = tmp_path / "docs.xlsx"
    src.write_bytes(b"PK\x03\x04")
    code, output = _score(tmp_path / "no-bundle", tmp_path, "--input", str(src), "--output", str(tmp_path / "o.jsonl"))
    assert code == 1
    assert "unsupported input format '.xlsx'" in output and "bundle" not in output


def test_score_packs_a_file_to_fill_the_budget_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file is a backlog: `score` sorts a whole chunk, fills the token budget and pads rows to few shapes; a
    packing field set by a flag or an environment variable is the user's and stays."""
    from inference.score import CHUNK, offline_settings
    from inference.settings import EngineSettings

    plain = offline_settings(EngineSettings(token_budget=2048))
    assert (plain.sort_window, plain.max_batch_docs, plain.pack_spread, plain.row_buckets) == (CHUNK, 2048, 0.0, 8)
    monkeypatch.setenv("RISKSTREAM_SORT_WINDOW", "64")
    told = offline_settings(EngineSettings(row_buckets=0, max_batch_docs=16))
    assert (told.sort_window, told.max_batch_docs, told.pack_spread, told.row_buckets) == (64, 16, 0.0, 0)


def test_the_offline_packing_answers_as_the_workers(bundle_v1: tuple[Path, str], tmp_path: Path) -> None:
    """The same file scored with `score`'s packing and with the worker's (small packs, no row padding): the same
    labels and confidences, row for row."""
    from tests.inference.helpers import MIXED_DOCS

    src = tmp_path / "docs.jsonl"
    docs = [{"text": f"{text} ({i})", "channel": channel} for i in range(12) for text, channel in MIXED_DOCS]
    src.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    outputs, summaries = [], []
    workers = ["--sort-window", "16", "--max-batch-docs", "8", "--row-buckets", "0", "--pack-spread", "1.5"]
    for name, packing in [("offline.jsonl", []), ("worker.jsonl", workers)]:
        out = tmp_path / name
        code, output = _score(bundle_v1[0], tmp_path, "--input", str(src), "--output", str(out), "--precision", "fp32",
                              *packing)  # fmt: skip
        assert code == 0, output
        summaries.append(json.loads(output[output.index("{") :]))
        outputs.append([json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()])
    # the command packed the file its own way unless told, and fewer, fuller passes did it
    assert summaries[0]["packing"] == {
        "token_budget": 4096, "sort_window": 8192, "max_batch_docs": 4096, "pack_spread": 0.0, "row_buckets": 8
    }  # fmt: skip
    assert summaries[1]["packing"]["sort_window"] == 16 and summaries[1]["packing"]["row_buckets"] == 0
    assert summaries[0]["forward_passes"] == 1 < summaries[1]["forward_passes"]
    offline, worker = outputs
    assert len(offline) == len(worker) == len(docs)
    for a, b in zip(offline, worker, strict=True):
        assert (a["sentiment"]["label"], a["topic"]["label"]) == (b["sentiment"]["label"], b["topic"]["label"])
        assert a["sentiment"]["score"] == pytest.approx(b["sentiment"]["score"], abs=1e-5)
        assert a["topic"]["score"] == pytest.approx(b["topic"]["score"], abs=1e-5)


def test_the_executable_ends_a_successful_run_early_with_everything_written(
    bundle_v1: tuple[Path, str], tmp_path: Path
) -> None:
    """``riskstream score`` ends its process without the interpreter's teardown (0.19 s with torch loaded): the
    output file must be whole, the summary printed to its last line, the log on the terminal, the exit code 0."""
    import subprocess
    import sys

    src = tmp_path / "docs.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": f"Shares of company {i} fell {i}%"}) + "\n" for i in range(300)),
        encoding="utf-8",
    )
    out = tmp_path / "scored.jsonl"
    exe = str(Path(sys.executable).parent / "riskstream")
    args = ["--input", str(src), "--output", str(out), "--channel", "news", "--bundle", str(bundle_v1[0])]
    common = ["--data-dir", str(tmp_path / "data"), "--torch-threads", "1", "--log-level", "INFO"]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, "score", *argv], check=False, capture_output=True, text=True, timeout=300)

    done = run(*args, *common, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["documents"] == 300  # the whole summary, through its closing brace
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(300)]
    assert not (tmp_path / "scored.jsonl.partial").exists()
    assert "lean encoder" in done.stderr  # a log line written before the end reached the terminal
    # a failure still goes through the interpreter's normal exit, with its code and message
    failed = run(*args[:2], "--output", str(tmp_path / "x.jsonl"), "--channel", "fax", "--bundle", str(bundle_v1[0]))
    assert failed.returncode != 0 and "fax" in failed.stderr

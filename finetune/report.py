"""Per-version evaluation reports: JSON plus confusion-matrix and reliability-diagram PNGs (matplotlib, Agg).

Written under ``<data_dir>/models/<version>/reports/``, beside (never inside) the checksummed bundle directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def reports_dir(models_dir: Path, version: str) -> Path:
    path = models_dir / version / "reports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def plot_confusion(confusion: list[list[int]], labels: list[str], title: str, path: Path) -> None:
    matrix = np.asarray(confusion, dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(5.0, min(24.0, 0.28 * len(labels) + 3))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)))
    ax.set_yticks(range(len(labels)))
    fontsize = 8 if len(labels) <= 25 else 5
    ax.set_xticklabels(labels, rotation=90, fontsize=fontsize)
    ax.set_yticklabels(labels, fontsize=fontsize)
    if len(labels) <= 10:
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title + " (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(bins: list[dict[str, float]], ece_value: float, title: str, path: Path) -> None:
    """Accuracy against mean confidence per bin (top) and how many predictions each bin holds (bottom, log scale):
    a bin of three predictions far from the diagonal matters less than one of three thousand."""
    fig, (ax, counts_ax) = plt.subplots(2, 1, figsize=(5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    used = [b for b in bins if b["count"]]
    centers = [(b["lower"] + b["upper"]) / 2 for b in used]
    width = (bins[0]["upper"] - bins[0]["lower"] if bins else 1 / 15) * 0.9
    ax.bar(centers, [b["accuracy"] for b in used], width=width, alpha=0.7, label="accuracy", edgecolor="black")
    ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "o", color="tab:red",
            label="mean confidence of bin")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    total = int(sum(b["count"] for b in bins))
    ax.set_title(f"{title}\nECE {ece_value:.3f}, {total:,} predictions")
    counts_ax.bar(centers, [b["count"] for b in used], width=width, color="tab:gray", edgecolor="black")
    counts_ax.set_yscale("log")
    counts_ax.set_ylabel("predictions")
    counts_ax.set_xlabel("confidence (calibrated)")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: Path, name: str, result: dict[str, Any], labels: list[str]) -> dict[str, str]:
    """Write ``<name>.json`` and the two PNGs for one dataset/split; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str), encoding="utf-8")
    written = {"json": str(json_path)}
    if result.get("confusion"):
        png = out_dir / f"{name}-confusion.png"
        plot_confusion(result["confusion"], labels, name, png)
        written["confusion_png"] = str(png)
    if result.get("reliability"):
        png = out_dir / f"{name}-reliability.png"
        plot_reliability(result["reliability"], float(result.get("ece", 0.0)), name, png)
        written["reliability_png"] = str(png)
    return written

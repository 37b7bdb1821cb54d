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
    fig, ax = plt.subplots(figsize=(5, 5))
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins if b["count"]]
    accuracy = [b["accuracy"] for b in bins if b["count"]]
    confidence = [b["confidence"] for b in bins if b["count"]]
    width = bins[0]["upper"] - bins[0]["lower"] if bins else 1 / 15
    ax.bar(centers, accuracy, width=width * 0.9, alpha=0.7, label="accuracy", edgecolor="black")
    ax.plot(confidence, accuracy, "o", color="tab:red", label="mean confidence of bin")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (calibrated)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece_value:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
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

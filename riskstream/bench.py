"""``riskstream bench``: benchmarks that compare alternatives side by side in one run on the same data.

Subcommands live with the stage they measure and are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

BENCHMARKS: dict[str, str] = {
    "inference": "inference.bench:bench_inference",
    "e2e": "inference.bench:bench_e2e",
    "ingest": "ingest.bench:bench_ingest",
}


class _LazyBench(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(BENCHMARKS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = BENCHMARKS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command: Any = getattr(importlib.import_module(module_name), attr)
        return command


@click.group("bench", cls=_LazyBench)
def bench() -> None:
    """Benchmarks (documents/s, latency, share of the machine's FP32 ceiling); print JSON with --json."""

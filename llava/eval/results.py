"""One result record per (run configuration, benchmark): what the scorers write and summarize reads.

A record is a JSON file ``{"benchmark", "primary_metric", "score", "metrics", "config", "cost",
"answers_file", "num_answers"}``. ``config`` (pruning method, token budget, heads, head strategy,
dynamic selection) and ``cost`` (mean equivalent tokens, FLOPs, prefill ms) come from the answers'
``metadata``, which the inference entry points fill in.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

CONFIG_FIELDS = ("pruning_method", "visual_token_num", "H", "head_strategy", "dynamic_selection")
COST_FIELDS = ("equivalent_tokens", "flops", "prefill_ms")


def run_config(answers: Sequence[dict]) -> dict[str, Any]:
    """The run configuration recorded in the answers' metadata (taken from the first answer)."""
    metadata = answers[0].get("metadata", {}) if answers else {}
    return {name: metadata.get(name) for name in CONFIG_FIELDS}


def mean_cost(answers: Sequence[dict]) -> dict[str, float | None]:
    """Mean of each cost field over the answers that record it (None when none does)."""
    cost: dict[str, float | None] = {}
    metadata_list = [answer.get("metadata", {}) for answer in answers]
    for name in COST_FIELDS:
        values = [metadata[name] for metadata in metadata_list if metadata.get(name) is not None]
        cost[name] = fmean(values) if values else None
    return cost


def build_result(
    benchmark: str,
    metrics: dict[str, Any],
    primary_metric: str | None,
    answers: Sequence[dict],
    answers_file: str,
) -> dict[str, Any]:
    """A result record; ``primary_metric=None`` for submission-only benchmarks (no local score)."""
    return {
        "benchmark": benchmark,
        "primary_metric": primary_metric,
        "score": metrics.get(primary_metric) if primary_metric else None,
        "metrics": metrics,
        "config": run_config(answers),
        "cost": mean_cost(answers),
        "answers_file": answers_file,
        "num_answers": len(answers),
    }


def add_result_json_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--result-json`` option every scorer takes."""
    parser.add_argument(
        "--result-json", default=None, help="also write a result record here (read by llava.eval.summarize)"
    )


def write_result(path: str | Path | None, result: dict[str, Any]) -> None:
    """Write a result record as JSON when a path is given."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_results(root: str | Path) -> list[dict[str, Any]]:
    """All result records under a folder (recursively), sorted by path."""
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(Path(root).rglob("*.json"))]

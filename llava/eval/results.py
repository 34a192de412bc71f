"""One result record per (run configuration, benchmark): what the scorers write and summarize reads.

A record is a JSON file ``{"benchmark", "primary_metric", "score", "metrics", "config", "run", "cost",
"coverage", "complete", "answers_file", "num_answers"}``. ``run`` is the run record the loader wrote beside
the answers file (``llava.eval.run_record``) and ``config`` its table key (pruning method, token budget,
heads, head strategy, dynamic selection); None when the run recorded none (never guessed from an answer).
``coverage`` is ``{"asked", "answered", "fraction"}``; ``complete`` is False under 100 %, and the scorers
then exit with ``INCOMPLETE_EXIT_CODE``. ``cost`` (mean equivalent tokens, FLOPs, prefill ms) comes from
the answers' ``metadata``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from llava.eval.run_record import read_run_record, result_config

COST_FIELDS = ("equivalent_tokens", "flops", "prefill_ms")
INCOMPLETE_EXIT_CODE = 3


def coverage(metrics: dict[str, Any], answers: Sequence[dict]) -> dict[str, Any]:
    """Questions asked (the ground truth's count) and answered (asked minus the scorer's missing answers)."""
    asked = metrics.get("num_questions")
    if asked is None:
        asked = len(answers)
    answered = asked - metrics.get("missing_answers", 0)
    return {"asked": asked, "answered": answered, "fraction": answered / asked if asked else 0.0}


def missing_answers(questions: Sequence[dict], answers: Sequence[dict]) -> int:
    """Questions (by ``question_id``) that no answer answers."""
    answered = {str(answer["question_id"]) for answer in answers}
    return sum(str(question["question_id"]) not in answered for question in questions)


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
    run = read_run_record(answers_file)
    covered = coverage(metrics, answers)
    return {
        "benchmark": benchmark,
        "primary_metric": primary_metric,
        "score": metrics.get(primary_metric) if primary_metric else None,
        "metrics": metrics,
        "config": result_config(run),
        "run": run,
        "coverage": covered,
        "complete": covered["asked"] > 0 and covered["answered"] == covered["asked"],
        "cost": mean_cost(answers),
        "answers_file": answers_file,
        "num_answers": len(answers),
    }


def add_result_json_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--result-json`` option every scorer takes."""
    parser.add_argument(
        "--result-json", default=None, help="also write a result record here (read by llava.eval.summarize)"
    )


def write_result(path: str | Path | None, result: dict[str, Any]) -> int:
    """Write a result record as JSON when a path is given; the scorer's exit code (``INCOMPLETE_EXIT_CODE``
    with a message when some questions have no answer, else 0)."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    covered = result["coverage"]
    if result["complete"]:
        return 0
    missing = covered["asked"] - covered["answered"]
    print(
        f"error: incomplete {result['benchmark']} result: {missing} of {covered['asked']} question(s) have no "
        f"answer in {result['answers_file']} (recorded as incomplete; re-run the loader to answer them)",
        file=sys.stderr,
    )
    return INCOMPLETE_EXIT_CODE


def read_results(root: str | Path) -> list[dict[str, Any]]:
    """All result records under a folder (recursively), sorted by path, each with its ``record_file``."""
    return [
        {**json.loads(path.read_text(encoding="utf-8")), "record_file": str(path)}
        for path in sorted(Path(root).rglob("*.json"))
    ]

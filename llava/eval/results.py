"""One result record per (run configuration, benchmark): what the scorers write and summarize reads.

A record is a JSON file ``{"benchmark", "primary_metric", "score", "metrics", "config", "run", "cost",
"coverage", "complete", "answers_file", "num_answers"}``. ``run`` is the run record the loader wrote beside
the answers file (``llava.eval.run_record``) and ``config`` its table key (pruning method, token budget,
heads, head strategy, dynamic selection); None when the run recorded none (never guessed from an answer).
``coverage`` is ``{"asked", "answered", "fraction"}``; ``complete`` is False under 100 %, and the scorers
then exit with ``INCOMPLETE_EXIT_CODE``. ``cost`` (mean equivalent tokens and FLOPs; median prefill ms and
its interquartile range ``prefill_ms_iqr``) comes from the answers' ``metadata``.

``metrics.per_question`` (GQA, POPE and ScienceQA scorers): each question's outcome (``correct``; POPE's
``split`` / ``label`` / ``prediction``; ScienceQA's ``first_letter`` / ``image``), from which
``llava.eval.intervals`` bootstraps the intervals ``summarize`` prints. ``evidence`` (optional, added by
``llava.eval.evidence.attach_evidence``): ``{"questions": {question id: [[layer, evidence kept, evidence,
kept, span], ...]}}``, each question's evidence recall per pruning stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean, median, quantiles
from typing import Any

from llava.eval.jsonl_io import InputFileError, read_json
from llava.eval.run_record import read_run_record, result_config

COMPUTED_FIELDS = ("equivalent_tokens", "flops")  # exact per answer: a mean
TIMING_FIELDS = ("prefill_ms",)  # measured, noisy: a median with its spread (``<name>_iqr``), never a mean
COST_FIELDS = (*COMPUTED_FIELDS, *(f"{name}_iqr" for name in TIMING_FIELDS), *TIMING_FIELDS)  # prefill_ms last
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


def interquartile_range(values: Sequence[float]) -> float | None:
    """``p75 - p25`` of ``values`` (None for fewer than two)."""
    if len(values) < 2:
        return None
    low, _, high = quantiles(values, n=4, method="inclusive")
    return high - low


def answers_cost(answers: Sequence[dict]) -> dict[str, float | None]:
    """Each cost field over the answers that record it (None when none does): the mean of the computed ones
    (equivalent tokens, FLOPs), the median of the measured ``TIMING_FIELDS`` (every answer is one repeat of a
    prefill, so a stall under load moves it little) with its interquartile range as ``<name>_iqr``."""
    cost: dict[str, float | None] = {}
    metadata_list = [answer.get("metadata", {}) for answer in answers]
    for name in (*COMPUTED_FIELDS, *TIMING_FIELDS):
        values = [metadata[name] for metadata in metadata_list if metadata.get(name) is not None]
        if name in TIMING_FIELDS:
            cost[name], cost[f"{name}_iqr"] = (median(values), interquartile_range(values)) if values else (None, None)
        else:
            cost[name] = fmean(values) if values else None
    return {name: cost[name] for name in COST_FIELDS}


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
        "cost": answers_cost(answers),
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def result_problem(record: Any) -> str | None:
    """Why a JSON document is not a usable result record, or None."""
    if not isinstance(record, dict):
        return f"expected a result record (a JSON object), got {type(record).__name__}"
    if not isinstance(record.get("benchmark"), str):
        return "no 'benchmark' name: not a result record written by a scorer's --result-json"
    if record.get("score") is not None and not _is_number(record["score"]):
        return f"'score' must be a number or null, got {record['score']!r}"
    for name in ("config", "coverage", "cost", "metrics", "evidence"):
        if record.get(name) is not None and not isinstance(record[name], dict):
            return f"'{name}' must be an object or null, got {type(record[name]).__name__}"
    per_question = (record.get("metrics") or {}).get("per_question")
    if per_question is not None and not (isinstance(per_question, dict) and all(isinstance(v, dict) for v in per_question.values())):
        return "'metrics.per_question' must map question ids to objects"
    questions = (record.get("evidence") or {}).get("questions", {})
    if not (isinstance(questions, dict) and all(isinstance(v, list) for v in questions.values())):
        return "'evidence.questions' must map question ids to lists of stages"
    fraction = (record.get("coverage") or {}).get("fraction", 1.0)
    if not _is_number(fraction):
        return f"'coverage.fraction' must be a number, got {fraction!r}"
    bad_costs = [name for name, value in (record.get("cost") or {}).items() if value is not None and not _is_number(value)]
    if bad_costs:
        return f"cost field(s) {', '.join(bad_costs)} must be numbers"
    return None


def read_results(root: str | Path) -> list[dict[str, Any]]:
    """All result records under a folder (recursively), sorted by path, each with its ``record_file``; a
    file that is not valid JSON or not a result record is an ``InputFileError`` naming it."""
    if not Path(root).is_dir():
        raise InputFileError(f"--results-dir {root}: no such folder")
    results = []
    for path in sorted(Path(root).rglob("*.json")):
        record = read_json(path)
        problem = result_problem(record)
        if problem:
            raise InputFileError(f"{path}: {problem}")
        results.append({**record, "record_file": str(path)})
    return results

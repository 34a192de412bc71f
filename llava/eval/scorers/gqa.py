"""GQA: exact-match accuracy (lower case, trailing period dropped) and GQA's predictions file.

Ground truth is GQA's question file (``testdev_balanced_questions.json``: ``{id: {"answer": ...}}``);
answers are matched by ``question_id``; a missing answer is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.answer_normalization import normalize_short_answer
from llava.eval.jsonl_io import exit_code_on_input_error, question_id_key, read_answers, read_json
from llava.eval.results import add_result_json_argument, build_result, write_result


def gqa_predictions(answers: Sequence[dict]) -> list[dict]:
    """GQA's evaluation-script format: ``[{"questionId", "prediction"}]`` with normalised predictions."""
    return [
        {"questionId": str(answer["question_id"]), "prediction": normalize_short_answer(answer["text"])}
        for answer in answers
    ]


def score_gqa(ground_truth: dict[str, dict], answers: Sequence[dict]) -> dict:
    """``accuracy`` in percent over all ground-truth questions, and how many had no answer;
    ``per_question``: ``{question id: {"correct": 0 | 1}}`` (for ``llava.eval.intervals``)."""
    predictions = {item["questionId"]: item["prediction"] for item in gqa_predictions(answers)}
    per_question = {
        question_id: {"correct": int(predictions.get(question_id) == normalize_short_answer(entry["answer"]))}
        for question_id, entry in ground_truth.items()
    }
    correct = sum(outcome["correct"] for outcome in per_question.values())
    return {
        "accuracy": 100 * correct / len(ground_truth) if ground_truth else 0.0,
        "num_questions": len(ground_truth),
        "missing_answers": sum(question_id not in predictions for question_id in ground_truth),
        "per_question": per_question,
    }


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: score a GQA answers file and write GQA's predictions JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", required=True, help="GQA testdev_balanced_questions.json")
    parser.add_argument("--result-file", required=True, help="answers JSONL")
    parser.add_argument("--predictions-file", default=None, help="write GQA-format predictions here")
    add_result_json_argument(parser)
    args = parser.parse_args(argv)
    answers = read_answers(args.result_file, unique_by=question_id_key)
    if args.predictions_file:
        Path(args.predictions_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.predictions_file).write_text(json.dumps(gqa_predictions(answers)), encoding="utf-8")
    metrics = score_gqa(read_json(args.questions), answers)
    print(f"Accuracy: {metrics['accuracy']:.2f}% over {metrics['num_questions']} questions")
    return write_result(args.result_json, build_result("gqa", metrics, "accuracy", answers, args.result_file))


if __name__ == "__main__":
    sys.exit(main())

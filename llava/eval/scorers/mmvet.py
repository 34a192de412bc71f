"""MM-Vet: the ``{"v1_<question_id>": answer}`` JSON that MM-Vet's GPT-4 grader takes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.jsonl_io import exit_code_on_input_error, question_id_key, read_answers, read_jsonl_strict
from llava.eval.results import add_result_json_argument, build_result, missing_answers, write_result


def build_mmvet_submission(answers: Sequence[dict]) -> dict[str, str]:
    """Answers keyed ``v1_<question_id>`` as MM-Vet's grader expects."""
    return {f"v1_{answer['question_id']}": answer["text"] for answer in answers}


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the MM-Vet grader input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result-file", required=True, help="answers JSONL")
    parser.add_argument("--question-file", required=True, help="the question JSONL that was answered (coverage)")
    parser.add_argument("--output-file", required=True, help="grader input JSON to write")
    add_result_json_argument(parser)
    args = parser.parse_args(argv)
    answers = read_answers(args.result_file, unique_by=question_id_key)
    Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
    submission = build_mmvet_submission(answers)
    Path(args.output_file).write_text(json.dumps(submission, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {len(submission)} answers to {args.output_file}")
    questions = read_jsonl_strict(args.question_file, required_fields=("question_id",))
    metrics = {"num_questions": len(questions), "missing_answers": missing_answers(questions, answers)}
    return write_result(args.result_json, build_result("mmvet", metrics, None, answers, args.result_file))


if __name__ == "__main__":
    sys.exit(main())

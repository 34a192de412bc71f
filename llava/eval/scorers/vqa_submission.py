"""VQAv2 and VizWiz submission files (scored by the benchmarks' own servers).

Every question of the split's question file gets an entry (an unanswered one gets ``""``), with the
standard VQA answer normalisation applied: VQAv2 ``[{"question_id": int, "answer"}]``, VizWiz
``[{"image": file name, "answer"}]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.answer_normalization import normalize_vqa_answer
from llava.eval.jsonl_io import exit_code_on_input_error, question_id_key, read_answers, read_jsonl_strict
from llava.eval.results import add_result_json_argument, build_result, missing_answers, write_result

SUBMISSION_ID_FIELD = {"vqav2": "question_id", "vizwiz": "image"}


def build_submission(benchmark: str, questions: Sequence[dict], answers: Sequence[dict]) -> list[dict]:
    """One submission entry per question, keyed as the benchmark's server expects."""
    replies = {str(answer["question_id"]): answer["text"] for answer in answers}
    id_field = SUBMISSION_ID_FIELD[benchmark]
    submission = []
    for question in questions:
        identity = int(question["question_id"]) if id_field == "question_id" else question[id_field]
        reply = replies.get(str(question["question_id"]), "")
        submission.append({id_field: identity, "answer": normalize_vqa_answer(reply)})
    return submission


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a VQAv2 or VizWiz submission JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", choices=sorted(SUBMISSION_ID_FIELD), required=True)
    parser.add_argument("--question-file", required=True, help="the split's LLaVA question JSONL")
    parser.add_argument("--result-file", required=True, help="answers JSONL")
    parser.add_argument("--output-file", required=True, help="submission JSON to write")
    add_result_json_argument(parser)
    args = parser.parse_args(argv)
    id_field = SUBMISSION_ID_FIELD[args.benchmark]
    questions = read_jsonl_strict(args.question_file, required_fields=sorted({"question_id", id_field}))
    answers = read_answers(args.result_file, unique_by=question_id_key)
    submission = build_submission(args.benchmark, questions, answers)
    Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_file).write_text(json.dumps(submission), encoding="utf-8")
    missing = missing_answers(questions, answers)
    print(f"wrote {len(submission)} entries ({missing} unanswered) to {args.output_file}")
    metrics = {"num_questions": len(questions), "missing_answers": missing}
    return write_result(args.result_json, build_result(args.benchmark, metrics, None, answers, args.result_file))


if __name__ == "__main__":
    sys.exit(main())

"""ScienceQA: option accuracy over a split, overall and on questions with an image (SQA-IMG).

Inputs are the official ``problems.json`` (``{id: {"choices": [...], "answer": index, "image": ...}}``)
and ``pid_splits.json`` (``{"test": [ids], ...}``) from ``--base-dir``; answers are matched by
``question_id`` (the problem id). A reply that names no valid option letter, or a missing answer,
is wrong (LLaVA's strict rule, ``parse_option_letter``). Beside it, the lenient ``first_letter_accuracy``
(and ``first_letter_img_accuracy``): the reply's first option letter standing as a word of its own
(``first_option_letter``: "A cat" picks A, which the strict rule leaves unparsed). ``per_question`` (in
the result record) holds each problem's ``correct`` / ``first_letter`` / ``image`` for the bootstrap
intervals of ``llava.eval.intervals``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.answer_normalization import parse_option_letter
from llava.eval.jsonl_io import InputFileError, exit_code_on_input_error, question_id_key, read_answers, read_json
from llava.eval.results import add_result_json_argument, build_result, write_result

OPTION_LETTERS = "ABCDEFGHIJ"


def first_option_letter(text: str, option_letters: str) -> str | None:
    """The first capital letter of ``option_letters`` that stands as a word of its own in a reply (``"B"``,
    ``"(B) cat"``, ``"A cat"``, ``"The answer is C."``), or None: the lenient reading beside
    ``parse_option_letter``'s strict one."""
    for match in re.finditer(r"\b([A-Z])\b", text):
        if match.group(1) in option_letters:
            return match.group(1)
    return None


def score_scienceqa(problems: dict[str, dict], split_ids: Sequence[str], answers: Sequence[dict]) -> dict:
    """``accuracy`` over the split, ``img_accuracy`` over its problems with an image (LLaVA's strict
    parsing), the same two by the reply's first option letter (``first_letter_*``), and counts;
    ``per_question``: ``{problem id: {"correct", "first_letter", "image"}}`` (0 / 1 each)."""
    replies = {str(answer["question_id"]): answer["text"] for answer in answers}
    correct, correct_img, num_img, unparsed = 0, 0, 0, 0
    first_letter, first_letter_img = 0, 0
    per_question = {}
    for problem_id in split_ids:
        problem = problems[problem_id]
        letters = OPTION_LETTERS[: len(problem["choices"])]
        reply = replies.get(problem_id, "")
        picked = parse_option_letter(reply, letters)
        unparsed += picked is None
        is_correct = picked == letters[problem["answer"]]
        correct += is_correct
        first_is_correct = first_option_letter(reply, letters) == letters[problem["answer"]]
        first_letter += first_is_correct
        has_image = bool(problem.get("image"))
        if has_image:
            num_img += 1
            correct_img += is_correct
            first_letter_img += first_is_correct
        per_question[problem_id] = {"correct": int(is_correct), "first_letter": int(first_is_correct), "image": int(has_image)}
    return {
        "accuracy": 100 * correct / len(split_ids) if split_ids else 0.0,
        "img_accuracy": 100 * correct_img / num_img if num_img else 0.0,
        "first_letter_accuracy": 100 * first_letter / len(split_ids) if split_ids else 0.0,
        "first_letter_img_accuracy": 100 * first_letter_img / num_img if num_img else 0.0,
        "num_questions": len(split_ids),
        "num_img_questions": num_img,
        "unparsed": unparsed,
        "missing_answers": sum(problem_id not in replies for problem_id in split_ids),
        "per_question": per_question,
    }


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: score a ScienceQA answers file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", required=True, help="folder with problems.json and pid_splits.json")
    parser.add_argument("--result-file", required=True, help="answers JSONL")
    parser.add_argument("--split", default="test")
    add_result_json_argument(parser)
    args = parser.parse_args(argv)
    problems = read_json(Path(args.base_dir) / "problems.json")
    splits = read_json(Path(args.base_dir) / "pid_splits.json")
    if args.split not in splits:
        raise InputFileError(f"split {args.split!r} not in pid_splits.json (has {', '.join(splits)})")
    unknown = [problem_id for problem_id in splits[args.split] if problem_id not in problems]
    if unknown:
        raise InputFileError(f"problems.json lacks split ids {', '.join(unknown[:5])}")
    answers = read_answers(args.result_file, unique_by=question_id_key)
    metrics = score_scienceqa(problems, splits[args.split], answers)
    print(f"Total: {metrics['num_questions']}, Accuracy: {metrics['accuracy']:.2f}%")
    print(f"IMG Total: {metrics['num_img_questions']}, IMG-Accuracy: {metrics['img_accuracy']:.2f}%")
    print(f"First-letter accuracy: {metrics['first_letter_accuracy']:.2f}%, IMG: {metrics['first_letter_img_accuracy']:.2f}%")
    return write_result(args.result_json, build_result("sqa", metrics, "img_accuracy", answers, args.result_file))


if __name__ == "__main__":
    sys.exit(main())

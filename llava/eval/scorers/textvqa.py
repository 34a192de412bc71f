"""TextVQA: VQA soft accuracy with the standard answer normalisation.

Ground truth is TextVQA's annotation file (``{"data": [{"image_id", "question", "answers": [10]}]}``).
As in LLaVA, an answer is matched by ``(question_id, question)``: LLaVA's TextVQA question file uses
the image id as ``question_id``, and the question is the first line of the prompt that is not the
OCR-token line. A missing answer scores 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.eval.answer_normalization import normalize_vqa_answer
from llava.eval.jsonl_io import InputFileError, exit_code_on_input_error, read_answers, read_json
from llava.eval.results import add_result_json_argument, build_result, write_result

OCR_LINE_PREFIXES = ("Reference OCR token", "OCR tokens")


def question_from_prompt(prompt: str) -> str:
    """The question line of a TextVQA prompt, lower case (OCR-token and instruction lines dropped)."""
    lines = [line for line in prompt.split("\n") if line.strip() and not line.startswith(OCR_LINE_PREFIXES)]
    return lines[0].strip().lower() if lines else ""


def vqa_soft_accuracy(prediction: str, ground_truths: Sequence[str]) -> float:
    """VQA accuracy in [0, 1]: mean over the 10 leave-one-out subsets of min(1, matches / 3)."""
    predicted = normalize_vqa_answer(prediction)
    normalized = [normalize_vqa_answer(answer) for answer in ground_truths]
    scores = []
    for left_out in range(len(normalized)):
        others = normalized[:left_out] + normalized[left_out + 1 :]
        scores.append(min(1.0, sum(answer == predicted for answer in others) / 3))
    return sum(scores) / len(scores) if scores else 0.0


def score_textvqa(annotations: Sequence[dict], answers: Sequence[dict]) -> dict:
    """``accuracy`` in percent over all annotated questions, and how many had no answer."""
    replies = {
        (str(answer["question_id"]), question_from_prompt(answer["prompt"])): answer["text"] for answer in answers
    }
    total, missing = 0.0, 0
    for annotation in annotations:
        key = (str(annotation["image_id"]), annotation["question"].strip().lower())
        missing += key not in replies
        total += vqa_soft_accuracy(replies.get(key, ""), annotation["answers"])
    return {
        "accuracy": 100 * total / len(annotations) if annotations else 0.0,
        "num_questions": len(annotations),
        "missing_answers": missing,
    }


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: score a TextVQA answers file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    parser.add_argument("--result-file", required=True, help="answers JSONL")
    add_result_json_argument(parser)
    args = parser.parse_args(argv)
    document = read_json(args.annotation_file)
    if not isinstance(document, dict) or "data" not in document:
        raise InputFileError(f"{args.annotation_file}: expected a TextVQA annotation file with a 'data' list")
    answers = read_answers(args.result_file)
    metrics = score_textvqa(document["data"], answers)
    print(f"Samples: {metrics['num_questions']}, Accuracy: {metrics['accuracy']:.2f}%")
    return write_result(args.result_json, build_result("textvqa", metrics, "accuracy", answers, args.result_file))


if __name__ == "__main__":
    sys.exit(main())

"""MME: per-subtask accuracy and accuracy+ (both questions of an image right), perception/cognition totals.

Ground truth is read from the official release folder (``MME_Benchmark_release_version``): each
subtask folder holds ``*.txt`` files (directly or under ``questions_answers_YN/``) with one
``question<TAB>Yes|No`` line per question, named after the image. An answer is matched by its
``question_id`` (``<subtask>/<image file>``) and the first line of its ``prompt`` (the question).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.answer_normalization import parse_yes_no
from llava.eval.jsonl_io import InputFileError, exit_code_on_input_error, read_answers
from llava.eval.results import add_result_json_argument, build_result, write_result

PERCEPTION_SUBTASKS = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION_SUBTASKS = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")

GroundTruthKey = tuple[str, str, str]


def load_ground_truth(gt_dir: str | Path) -> dict[GroundTruthKey, str]:
    """``(subtask, image stem, question) -> "yes"|"no"`` from the official MME release folder."""
    ground_truth: dict[GroundTruthKey, str] = {}
    for subtask_dir in sorted(Path(gt_dir).iterdir()):
        if not subtask_dir.is_dir():
            continue
        qa_dir = subtask_dir / "questions_answers_YN"
        for txt_path in sorted((qa_dir if qa_dir.is_dir() else subtask_dir).glob("*.txt")):
            for line_number, line in enumerate(txt_path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 2:
                    raise InputFileError(f"{txt_path}:{line_number}: expected 'question<TAB>answer'")
                key = (subtask_dir.name, txt_path.stem, fields[0].strip())
                ground_truth[key] = fields[1].strip().lower()
    if not ground_truth:
        raise InputFileError(f"{gt_dir}: no MME ground-truth .txt files found")
    return ground_truth


def answer_ground_truth_key(answer: dict) -> GroundTruthKey:
    """The ground-truth key of an answer: subtask and image stem from its id, question from its prompt.

    Only the prompt's first line is the question (an instruction line may follow it).
    """
    subtask, _, image_name = str(answer["question_id"]).partition("/")
    return subtask, Path(image_name).stem, answer["prompt"].split("\n")[0].strip()


def subtask_scores(graded: Sequence[tuple[str, bool]]) -> dict[str, float]:
    """acc (% questions right), acc_plus (% images with every question right) and score = acc + acc_plus."""
    per_image: dict[str, list[bool]] = {}
    for image_stem, correct in graded:
        per_image.setdefault(image_stem, []).append(correct)
    accuracy = 100 * sum(correct for _, correct in graded) / len(graded)
    accuracy_plus = 100 * sum(all(results) for results in per_image.values()) / len(per_image)
    return {"acc": accuracy, "acc_plus": accuracy_plus, "score": accuracy + accuracy_plus}


def score_mme(answers: Sequence[dict], ground_truth: dict[GroundTruthKey, str]) -> dict:
    """Subtask scores and the perception, cognition and total scores; unanswered questions are wrong.

    A reply counts as yes/no by its first word; anything else ("other") is wrong.
    """
    replies = {answer_ground_truth_key(answer): parse_yes_no(answer["text"]) for answer in answers}
    graded: dict[str, list[tuple[str, bool]]] = {}
    for key, truth in ground_truth.items():
        subtask, image_stem, _ = key
        graded.setdefault(subtask, []).append((image_stem, replies.get(key) == truth))
    subtasks = {subtask: subtask_scores(results) for subtask, results in sorted(graded.items())}
    perception = sum(subtasks[name]["score"] for name in PERCEPTION_SUBTASKS if name in subtasks)
    cognition = sum(subtasks[name]["score"] for name in COGNITION_SUBTASKS if name in subtasks)
    return {
        "subtasks": subtasks,
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "num_questions": len(ground_truth),
        "missing_answers": sum(key not in replies for key in ground_truth),
    }


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: score an MME answers file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt-dir", required=True, help="MME_Benchmark_release_version folder")
    parser.add_argument("--result-file", required=True, help="answers JSONL")
    add_result_json_argument(parser)
    args = parser.parse_args(argv)
    answers = read_answers(args.result_file, unique_by=answer_ground_truth_key)
    metrics = score_mme(answers, load_ground_truth(args.gt_dir))
    for subtask, scores in metrics["subtasks"].items():
        print(f"{subtask:<24} " + "  ".join(f"{name} {value:7.2f}" for name, value in scores.items()))
    print("  ".join(f"{name} {metrics[name]:.2f}" for name in ("perception", "cognition", "total")))
    if metrics["missing_answers"]:
        print(f"warning: {metrics['missing_answers']} ground-truth question(s) have no answer", file=sys.stderr)
    return write_result(args.result_json, build_result("mme", metrics, "total", answers, args.result_file))


if __name__ == "__main__":
    sys.exit(main())

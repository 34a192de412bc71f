"""POPE: accuracy, precision, recall, F1 and yes-ratio per split (adversarial/popular/random), mean F1.

Labels come from LLaVA's annotation folder (``coco_pope_<split>.json``, one ``{"label": "yes"|"no"}``
per line), matched in order to the question file's questions of that ``category`` (LLaVA's
convention), or from a ``label`` field on each question when no folder is given. ``accuracy_mean`` (the
mean over splits of the accuracy) stands beside ``f1_mean``; ``per_question`` holds each question's
``split``, ``label``, ``prediction`` and ``correct`` for the bootstrap intervals of ``llava.eval.intervals``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.answer_normalization import parse_pope_answer
from llava.eval.jsonl_io import (
    InputFileError,
    exit_code_on_input_error,
    question_id_key,
    read_answers,
    read_jsonl_strict,
)
from llava.eval.results import add_result_json_argument, build_result, write_result

MISSING = "<missing>"


def binary_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Metrics in percent with "yes" as the positive class; ``num`` is the number of questions.

    A prediction of ``MISSING`` (no answer) is wrong whatever the label: a missed positive, never a "yes"
    or a "no"."""
    pairs = list(zip(predictions, labels, strict=True))
    true_pos = sum(p == "yes" and t == "yes" for p, t in pairs)
    false_pos = sum(p == "yes" and t == "no" for p, t in pairs)
    true_neg = sum(p == "no" and t == "no" for p, t in pairs)
    false_neg = sum(p != "yes" and t == "yes" for p, t in pairs)
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = len(pairs)
    return {
        "accuracy": 100 * (true_pos + true_neg) / total if total else 0.0,
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f1": 100 * f1,
        "yes_ratio": 100 * (true_pos + false_pos) / total if total else 0.0,
        "num": total,
        "missing": sum(p == MISSING for p, _ in pairs),
    }


def load_labels(questions: Sequence[dict], annotation_dir: str | Path | None) -> dict[str, tuple[str, str]]:
    """``question_id -> (split, label)``: annotation folder matched in question order, else ``label``; a
    question id used twice is an ``InputFileError`` (its label would be taken from either)."""
    seen: set[str] = set()
    for question in questions:
        if str(question["question_id"]) in seen:
            raise InputFileError(f"question_id {question['question_id']!r} appears twice in the question file")
        seen.add(str(question["question_id"]))
    if annotation_dir is None:
        unlabeled = [str(q["question_id"]) for q in questions if "label" not in q]
        if unlabeled:
            listed = ", ".join(unlabeled[:5])
            raise InputFileError(f"no --annotation-dir and no 'label' on question(s) {listed}")
        return {str(q["question_id"]): (q["category"], q["label"].strip().lower()) for q in questions}
    labels: dict[str, tuple[str, str]] = {}
    for split in sorted({question["category"] for question in questions}):
        annotation_path = Path(annotation_dir) / f"coco_pope_{split}.json"
        annotations = read_jsonl_strict(annotation_path, required_fields=("label",))
        split_questions = [question for question in questions if question["category"] == split]
        if len(split_questions) != len(annotations):
            raise InputFileError(
                f"{annotation_path}: {len(annotations)} labels for {len(split_questions)} '{split}' questions"
            )
        for question, annotation in zip(split_questions, annotations, strict=True):
            labels[str(question["question_id"])] = (split, annotation["label"].strip().lower())
    return labels


def score_pope(answers: Sequence[dict], labels: dict[str, tuple[str, str]]) -> dict:
    """Per-split metrics, ``f1_mean`` and ``accuracy_mean``; an unanswered question counts as wrong;
    ``per_question``: ``{question id: {"split", "label", "prediction", "correct"}}``."""
    answer_text = {str(answer["question_id"]): answer["text"] for answer in answers}
    by_split: dict[str, tuple[list[str], list[str]]] = {}
    for question_id, (split, label) in labels.items():
        predictions, truths = by_split.setdefault(split, ([], []))
        reply = answer_text.get(question_id)
        predictions.append(MISSING if reply is None else parse_pope_answer(reply))
        truths.append(label)
    splits = {split: binary_metrics(*pair) for split, pair in sorted(by_split.items())}
    per_question = {}
    for question_id, (split, label) in labels.items():
        reply = answer_text.get(question_id)
        prediction = MISSING if reply is None else parse_pope_answer(reply)
        per_question[question_id] = {"split": split, "label": label, "prediction": prediction,
                                     "correct": int(prediction == label)}
    return {
        "splits": splits,
        "f1_mean": sum(m["f1"] for m in splits.values()) / len(splits) if splits else 0.0,
        "accuracy_mean": sum(m["accuracy"] for m in splits.values()) / len(splits) if splits else 0.0,
        "num_questions": len(labels),
        "missing_answers": sum(question_id not in answer_text for question_id in labels),
        "per_question": per_question,
    }


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: score a POPE answers file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-dir", default=None, help="folder with coco_pope_<split>.json")
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--result-file", required=True, help="answers JSONL")
    add_result_json_argument(parser)
    args = parser.parse_args(argv)
    questions = read_jsonl_strict(args.question_file, required_fields=("question_id", "category"))
    answers = read_answers(args.result_file, unique_by=question_id_key)
    metrics = score_pope(answers, load_labels(questions, args.annotation_dir))
    columns = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    for split, split_metrics in metrics["splits"].items():
        print(f"Category: {split}, # samples: {split_metrics['num']}")
        print("\t".join(columns))
        print("\t".join(f"{split_metrics[column]:.2f}" for column in columns))
    print(f"Mean F1: {metrics['f1_mean']:.2f}, mean accuracy: {metrics['accuracy_mean']:.2f}")
    return write_result(args.result_json, build_result("pope", metrics, "f1_mean", answers, args.result_file))


if __name__ == "__main__":
    sys.exit(main())

"""MMBench / MMBench-CN: submission file, plus accuracy and circular accuracy when answers are present.

The submission holds the question columns and a ``prediction`` (the round-0 reply) per row, for the
official evaluation server: an Excel workbook (``--upload-file x.xlsx``, the file LLaVA's converter
writes and the leaderboard takes) or a TSV (``x.tsv``). When the TSV has an ``answer`` column (dev split), replies are graded by
option text: a round is right when the letter it names shows the correct option in that round's
order; ``accuracy`` uses round 0, ``circular_accuracy`` needs every round of a question right
(only reported when answers were generated with ``--all-rounds``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from llava.eval.answer_normalization import parse_option_letter
from llava.eval.jsonl_io import InputFileError, exit_code_on_input_error, read_answers
from llava.eval.mmbench_data import OPTION_COLUMNS, is_blank, read_mmbench_tsv, row_options
from llava.eval.results import add_result_json_argument, build_result, write_result

SUBMISSION_COLUMNS = ("index", "question", *OPTION_COLUMNS, "answer", "category", "l2-category", "split")


def option_round_key(answer: dict) -> tuple[int, int]:
    """The question an MMBench answer answers: its index and circular round (integers, else
    ``InputFileError``)."""
    try:
        return int(answer["question_id"]), int(answer.get("round_idx", 0))
    except (TypeError, ValueError):
        raise InputFileError(
            f"answer with question_id {answer['question_id']!r}, round_idx {answer.get('round_idx')!r}: "
            "MMBench answers need integer ids and rounds"
        ) from None


def round_is_correct(answer: dict, truth: str) -> bool:
    """Whether one round's reply names the letter that shows the correct option text."""
    letters = "".join(answer.get("option_char") or OPTION_COLUMNS[: len(answer["options"])])
    picked = parse_option_letter(answer["text"], letters)
    return picked is not None and answer["options"][letters.index(picked)] == truth


def score_mmbench(rows: Sequence[dict[str, str]], answers: Sequence[dict]) -> dict:
    """Round-0 accuracy, circular accuracy (None without all rounds) and per-category accuracy, in %."""
    truths = {int(row["index"]): (row[row["answer"].strip()], row.get("category", "")) for row in rows}
    option_counts = {int(row["index"]): len(row_options(row)) for row in rows}
    rounds: dict[int, dict[int, bool]] = {index: {} for index in truths}
    for answer in answers:
        index = int(answer["question_id"])
        if index in truths:
            rounds[index][int(answer.get("round_idx", 0))] = round_is_correct(answer, truths[index][0])
    first_round = {index: graded.get(0, False) for index, graded in rounds.items()}
    all_rounds_present = all(len(rounds[index]) == option_counts[index] for index in rounds)
    per_category: dict[str, list[bool]] = {}
    for index, correct in first_round.items():
        per_category.setdefault(truths[index][1], []).append(correct)
    return {
        "accuracy": 100 * sum(first_round.values()) / len(first_round) if first_round else 0.0,
        "circular_accuracy": 100 * sum(all(graded.values()) for graded in rounds.values()) / len(rounds)
        if rounds and all_rounds_present
        else None,
        "categories": {name: 100 * sum(marks) / len(marks) for name, marks in sorted(per_category.items())},
        "num_questions": len(rows),
        "missing_answers": sum(not graded for graded in rounds.values()),
    }


SUBMISSION_FORMATS = (".xlsx", ".tsv")


def submission_table(rows: Sequence[dict[str, str]], answers: Sequence[dict]) -> list[list[str]]:
    """Header and one line per question: the question columns and the round-0 ``prediction``."""
    predictions = {int(a["question_id"]): a["text"] for a in answers if int(a.get("round_idx", 0)) == 0}
    table = [[*SUBMISSION_COLUMNS, "prediction"]]
    for row in rows:
        table.append([*(row.get(column) or "" for column in SUBMISSION_COLUMNS), predictions.get(int(row["index"]), "")])
    return table


def write_submission(rows: Sequence[dict[str, str]], answers: Sequence[dict], path: str | Path) -> None:
    """Write the submission as .xlsx (one sheet, as LLaVA's converter) or .tsv, by the file's suffix."""
    path = Path(path)
    if path.suffix not in SUBMISSION_FORMATS:
        raise ValueError(f"submission file {path} must end in {' or '.join(SUBMISSION_FORMATS)}")
    table = submission_table(rows, answers)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tsv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, delimiter="\t").writerows(table)
        return
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    for line in table:
        sheet.append(line)
    workbook.save(path)


@exit_code_on_input_error
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the MMBench submission and score when the TSV has answers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True, help="the MMBench TSV that was answered")
    parser.add_argument("--result-file", required=True, help="answers JSONL")
    parser.add_argument("--upload-file", required=True, help="submission file to write: .xlsx (the leaderboard's) or .tsv")
    parser.add_argument("--benchmark", default="mmbench", help="name in the result record (e.g. mmbench_cn)")
    add_result_json_argument(parser)
    args = parser.parse_args(argv)
    if Path(args.upload_file).suffix not in SUBMISSION_FORMATS:
        parser.error(f"--upload-file {args.upload_file} must end in {' or '.join(SUBMISSION_FORMATS)}")
    rows, _ = read_mmbench_tsv(args.annotation_file)
    answers = read_answers(args.result_file, unique_by=option_round_key)
    write_submission(rows, answers, args.upload_file)
    print(f"wrote {len(rows)} rows to {args.upload_file}")
    if rows and all(not is_blank(row.get("answer")) for row in rows):
        metrics = score_mmbench(rows, answers)
        circular = metrics["circular_accuracy"]
        print(f"Accuracy: {metrics['accuracy']:.2f}%" + (f", circular: {circular:.2f}%" if circular is not None else ""))
        primary = "accuracy" if circular is None else "circular_accuracy"
    else:  # submission only: no score, but the coverage of the rows asked
        answered = {int(a["question_id"]) for a in answers if int(a.get("round_idx", 0)) == 0}
        missing = sum(int(row["index"]) not in answered for row in rows)
        metrics, primary = {"num_questions": len(rows), "missing_answers": missing}, None
    return write_result(args.result_json, build_result(args.benchmark, metrics, primary, answers, args.result_file))


if __name__ == "__main__":
    sys.exit(main())

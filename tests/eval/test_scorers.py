"""Scorers on hand-made answer files with known scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.eval.results import INCOMPLETE_EXIT_CODE
from llava.eval.scorers import gqa, mmbench, mme, mmvet, pope, scienceqa, textvqa, vqa_submission
from tests.eval.helpers import answer, write_lines


def test_binary_metrics_known_values() -> None:
    metrics = pope.binary_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert metrics["accuracy"] == pytest.approx(60.0)
    assert metrics["precision"] == pytest.approx(100 * 2 / 3)
    assert metrics["recall"] == pytest.approx(100 * 2 / 3)
    assert metrics["f1"] == pytest.approx(100 * 2 / 3)
    assert metrics["yes_ratio"] == pytest.approx(60.0)


def test_pope_cli_with_annotation_dir(tmp_path: Path) -> None:
    splits = ["random", "random", "popular", "popular"]
    write_lines(tmp_path / "q.jsonl", [{"question_id": i, "category": split} for i, split in enumerate(splits)])
    write_lines(tmp_path / "ann" / "coco_pope_random.json", [{"label": "yes"}, {"label": "no"}])
    write_lines(tmp_path / "ann" / "coco_pope_popular.json", [{"label": "no"}, {"label": "yes"}])
    # random: replies yes/yes for labels yes/no -> acc 50, F1 2/3;
    # popular: "No" for "no" and "" (counts as yes, as in LLaVA) for "yes" -> acc 100, F1 100.
    write_lines(tmp_path / "a.jsonl", [answer(0, "Yes."), answer(1, "yes"), answer(2, "No"), answer(3, "")])
    result_json = tmp_path / "result.json"
    code = pope.main(
        ["--annotation-dir", str(tmp_path / "ann"), "--question-file", str(tmp_path / "q.jsonl"),
         "--result-file", str(tmp_path / "a.jsonl"), "--result-json", str(result_json)]
    )
    assert code == 0
    result = json.loads(result_json.read_text())
    splits = result["metrics"]["splits"]
    assert splits["random"]["accuracy"] == pytest.approx(50.0)
    assert splits["random"]["f1"] == pytest.approx(100 * 2 / 3)
    assert splits["popular"]["accuracy"] == pytest.approx(100.0)
    assert result["score"] == pytest.approx((100 * 2 / 3 + 100) / 2)
    assert result["primary_metric"] == "f1_mean"


def test_pope_label_count_mismatch_is_a_clear_error(tmp_path: Path, capsys) -> None:
    write_lines(tmp_path / "q.jsonl", [{"question_id": 0, "category": "random"}])
    write_lines(tmp_path / "ann" / "coco_pope_random.json", [{"label": "yes"}, {"label": "no"}])
    write_lines(tmp_path / "a.jsonl", [answer(0, "yes")])
    code = pope.main(["--annotation-dir", str(tmp_path / "ann"), "--question-file", str(tmp_path / "q.jsonl"),
                      "--result-file", str(tmp_path / "a.jsonl")])
    assert code == 1
    assert "2 labels for 1 'random' questions" in capsys.readouterr().err


def _write_mme_release(root: Path) -> None:
    (root / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN" / "10.txt").write_text("Is it a painting?\tYes\nIs it a dog?\tNo\n")
    (root / "artwork" / "questions_answers_YN" / "11.txt").write_text("Is it red?\tYes\nIs it blue?\tNo\n")
    (root / "code_reasoning").mkdir()
    (root / "code_reasoning" / "0001.txt").write_text("Does it print 3?\tYes\nDoes it print 4?\tNo\n")


def test_mme_acc_and_acc_plus(tmp_path: Path) -> None:
    _write_mme_release(tmp_path / "gt")
    answers = [
        answer("artwork/10.jpg", "Yes.", "Is it a painting?"),
        answer("artwork/10.jpg", "no", "Is it a dog?\nAnswer the question using a single word or phrase."),
        answer("artwork/11.jpg", "Yes", "Is it red?"),
        answer("artwork/11.jpg", "Maybe", "Is it blue?"),  # neither yes nor no: wrong
        answer("code_reasoning/0001.png", "Yes", "Does it print 3?"),
    ]  # "Does it print 4?" unanswered: wrong
    metrics = mme.score_mme(answers, mme.load_ground_truth(tmp_path / "gt"))
    assert metrics["subtasks"]["artwork"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert metrics["subtasks"]["code_reasoning"] == {"acc": 50.0, "acc_plus": 0.0, "score": 50.0}
    assert metrics["perception"] == 125.0
    assert metrics["cognition"] == 50.0
    assert metrics["total"] == 175.0
    assert metrics["missing_answers"] == 1


def test_scienceqa_overall_and_image_accuracy(tmp_path: Path) -> None:
    problems = {
        "1": {"choices": ["cat", "dog"], "answer": 0, "image": "image.png"},
        "2": {"choices": ["a", "b", "c"], "answer": 2, "image": "image.png"},
        "3": {"choices": ["x", "y"], "answer": 1, "image": None},
        "4": {"choices": ["x", "y"], "answer": 0, "image": None},
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3", "4"]}))
    write_lines(tmp_path / "a.jsonl", [answer("1", "A"), answer("2", "The answer is C."), answer("3", "A")])
    result_json = tmp_path / "r.json"
    assert scienceqa.main(["--base-dir", str(tmp_path), "--result-file", str(tmp_path / "a.jsonl"),
                           "--result-json", str(result_json)]) == INCOMPLETE_EXIT_CODE  # problem 4 unanswered
    result = json.loads(result_json.read_text())
    assert result["complete"] is False and result["coverage"] == {"asked": 4, "answered": 3, "fraction": 0.75}
    metrics = result["metrics"]
    assert metrics["accuracy"] == 50.0
    assert metrics["img_accuracy"] == 100.0
    assert metrics["missing_answers"] == 1


def test_gqa_accuracy_and_predictions(tmp_path: Path) -> None:
    truth = {"q1": {"answer": "left"}, "q2": {"answer": "yes"}, "q3": {"answer": "red"}}
    answers = [answer("q1", "Left."), answer("q2", "no"), answer("q3", " RED")]
    assert gqa.score_gqa(truth, answers)["accuracy"] == pytest.approx(200 / 3)
    assert gqa.gqa_predictions(answers)[0] == {"questionId": "q1", "prediction": "left"}


def test_vqa_soft_accuracy_counts_matches_over_three() -> None:
    ground_truths = ["two"] * 2 + ["3"] * 8
    assert textvqa.vqa_soft_accuracy("2", ground_truths) == pytest.approx((8 * (2 / 3) + 2 * (1 / 3)) / 10)
    assert textvqa.vqa_soft_accuracy("Three.", ground_truths) == pytest.approx(1.0)
    assert textvqa.vqa_soft_accuracy("", ground_truths) == 0.0


def test_textvqa_matches_by_image_id_and_question(tmp_path: Path) -> None:
    annotations = {"data": [
        {"image_id": "img1", "question": "What brand?", "answers": ["nike"] * 10},
        {"image_id": "img1", "question": "What number?", "answers": ["5"] * 10},
    ]}
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    prompt_two = "what number?\nReference OCR token: 5, 6\nAnswer the question using a single word or phrase."
    write_lines(tmp_path / "a.jsonl", [answer("img1", "Nike", "What brand?"), answer("img1", "five", prompt_two)])
    result_json = tmp_path / "r.json"
    assert textvqa.main(["--annotation-file", str(tmp_path / "ann.json"), "--result-file",
                         str(tmp_path / "a.jsonl"), "--result-json", str(result_json)]) == 0
    assert json.loads(result_json.read_text())["score"] == pytest.approx(100.0)


def test_vqa_submissions_cover_every_question(tmp_path: Path) -> None:
    questions = [{"question_id": 7, "image": "a.jpg", "text": "q"}, {"question_id": 8, "image": "b.jpg", "text": "q"}]
    answers = [answer(7, "Two.")]
    assert vqa_submission.build_submission("vqav2", questions, answers) == [
        {"question_id": 7, "answer": "2"},
        {"question_id": 8, "answer": ""},
    ]
    assert vqa_submission.build_submission("vizwiz", questions, answers)[0] == {"image": "a.jpg", "answer": "2"}


def test_mmvet_submission_keys() -> None:
    assert mmvet.build_mmvet_submission([answer(0, "a dog"), answer(5, "")]) == {"v1_0": "a dog", "v1_5": ""}


def _mmbench_rows() -> list[dict[str, str]]:
    return [
        {"index": "1", "question": "q1", "A": "cat", "B": "dog", "C": "", "answer": "B", "category": "x"},
        {"index": "2", "question": "q2", "A": "red", "B": "blue", "C": "green", "answer": "A", "category": "y"},
    ]


def _round(index: int, round_idx: int, options: list[str], reply: str) -> dict:
    return answer(index, reply, f"p{round_idx}", round_idx=round_idx, options=options,
                  option_char=list("ABC"[: len(options)]))


def test_mmbench_circular_accuracy_needs_every_round_right() -> None:
    answers = [
        _round(1, 0, ["cat", "dog"], "B"),
        _round(1, 1, ["dog", "cat"], "A"),  # still "dog": right
        _round(2, 0, ["red", "blue", "green"], "A"),
        _round(2, 1, ["blue", "green", "red"], "A"),  # "blue": wrong
        _round(2, 2, ["green", "red", "blue"], "B"),
    ]
    metrics = mmbench.score_mmbench(_mmbench_rows(), answers)
    assert metrics["accuracy"] == 100.0
    assert metrics["circular_accuracy"] == 50.0
    assert metrics["categories"] == {"x": 100.0, "y": 100.0}


def test_mmbench_single_round_has_no_circular_accuracy() -> None:
    answers = [_round(1, 0, ["cat", "dog"], "A"), _round(2, 0, ["red", "blue", "green"], "(A)")]
    metrics = mmbench.score_mmbench(_mmbench_rows(), answers)
    assert metrics["accuracy"] == 50.0
    assert metrics["circular_accuracy"] is None


def test_mmbench_submission_only_counts_the_rows_without_an_answer(tmp_path: Path) -> None:
    tsv = tmp_path / "mmbench_test.tsv"
    rows = [{**row, "answer": "", "image": "aGk="} for row in _mmbench_rows()]  # the test split has no ground truth
    tsv.write_text("\n".join(["\t".join(rows[0]), *("\t".join(row.values()) for row in rows)]) + "\n")
    answers_file = tmp_path / "answers.jsonl"
    answers_file.write_text(json.dumps(_round(1, 0, ["cat", "dog"], "B")) + "\n")
    result = tmp_path / "result.json"
    code = mmbench.main(["--annotation-file", str(tsv), "--result-file", str(answers_file),
                         "--upload-file", str(tmp_path / "upload.tsv"), "--result-json", str(result)])
    record = json.loads(result.read_text())
    assert record["score"] is None and record["coverage"] == {"asked": 2, "answered": 1, "fraction": 0.5}
    assert code == INCOMPLETE_EXIT_CODE and record["complete"] is False


def test_mmvet_coverage_is_counted_against_the_question_file(tmp_path: Path) -> None:
    questions, answers_file, result = tmp_path / "q.jsonl", tmp_path / "a.jsonl", tmp_path / "mmvet.json"
    write_lines(questions, [{"question_id": 0, "text": "q0"}, {"question_id": 1, "text": "q1"}])
    write_lines(answers_file, [answer(0, "a dog")])
    code = mmvet.main(["--result-file", str(answers_file), "--question-file", str(questions),
                       "--output-file", str(tmp_path / "grader.json"), "--result-json", str(result)])
    assert code == INCOMPLETE_EXIT_CODE
    assert json.loads(result.read_text())["coverage"] == {"asked": 2, "answered": 1, "fraction": 0.5}


def test_mmbench_xlsx_and_tsv_submissions_hold_the_same_table(tmp_path: Path) -> None:
    from openpyxl import load_workbook

    rows = _mmbench_rows()
    answers = [_round(1, 0, ["cat", "dog"], "B")]
    mmbench.write_submission(rows, answers, tmp_path / "upload.xlsx")
    mmbench.write_submission(rows, answers, tmp_path / "upload.tsv")
    sheet = load_workbook(tmp_path / "upload.xlsx").active
    from_xlsx = [["" if cell is None else str(cell) for cell in line] for line in sheet.iter_rows(values_only=True)]
    from_tsv = [line.split("\t") for line in (tmp_path / "upload.tsv").read_text().splitlines()]
    assert from_xlsx == from_tsv == mmbench.submission_table(rows, answers)
    assert from_xlsx[0][-1] == "prediction" and from_xlsx[1][-1] == "B" and from_xlsx[2][-1] == ""


def test_mmbench_upload_file_with_another_suffix_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        mmbench.main(["--annotation-file", "x.tsv", "--result-file", "a.jsonl", "--upload-file", str(tmp_path / "up.csv")])
    assert "must end in .xlsx or .tsv" in capsys.readouterr().err

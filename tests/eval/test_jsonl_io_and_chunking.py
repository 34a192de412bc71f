"""Question/answer file IO (per-line errors, resume after a partial line) and chunk split/merge."""

from __future__ import annotations

import pytest

from llava.eval.chunking import chunk_answers_path, get_chunk, merge_answer_files
from llava.eval.chunking import main as merge_main
from llava.eval.jsonl_io import completed_keys, drop_incomplete_tail, errors_path_for, read_jsonl
from tests.eval.helpers import answer, read_lines, write_lines


def test_read_jsonl_reports_each_bad_line(tmp_path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\n\n{oops\n[1, 2]\n{"question_id": 2}\n')
    records, errors = read_jsonl(path, required_fields=("question_id", "text"))
    assert [record["question_id"] for record in records] == [1]
    assert [(error.line_number, error.message.split(" (")[0]) for error in errors] == [
        (3, "invalid JSON"),
        (4, "expected a JSON object, got list"),
        (5, "missing field(s): text"),
    ]
    assert str(errors[0]).startswith(f"{path}:3: invalid JSON")


def test_partial_last_line_is_dropped_before_resuming(tmp_path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [answer(1, "x"), answer(2, "y")])
    with path.open("a") as handle:
        handle.write('{"question_id": 3, "te')
    assert completed_keys(path) == {("1", 0, ""), ("2", 0, "")}
    assert drop_incomplete_tail(path) == 0
    assert path.read_text().endswith('"y"}\n')


@pytest.mark.parametrize(("length", "num_chunks"), [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_chunks_partition_the_list_in_order(length: int, num_chunks: int) -> None:
    items = list(range(length))
    chunks = [get_chunk(items, num_chunks, index) for index in range(num_chunks)]
    assert sum(chunks, []) == items
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


def test_bad_chunk_arguments_raise() -> None:
    with pytest.raises(ValueError, match="chunk_idx"):
        get_chunk([1, 2], 2, 2)


def test_merge_keeps_chunk_order_drops_duplicates_and_joins_errors(tmp_path) -> None:
    write_lines(chunk_answers_path(tmp_path, 2, 0), [answer(1, "a"), answer(2, "b"), answer(1, "a")])
    write_lines(chunk_answers_path(tmp_path, 2, 1), [answer(3, "c", round_idx=0), answer(3, "d", round_idx=1)])
    write_lines(errors_path_for(chunk_answers_path(tmp_path, 2, 1)), [{"question_id": 4, "error": "boom"}])
    output = tmp_path / "merge.jsonl"
    assert merge_answer_files([chunk_answers_path(tmp_path, 2, i) for i in range(2)], output) == 4
    assert [record["text"] for record in read_lines(output)] == ["a", "b", "c", "d"]
    assert read_lines(errors_path_for(output)) == [{"question_id": 4, "error": "boom"}]


def test_merge_cli_fails_clearly_on_a_missing_chunk(tmp_path, capsys) -> None:
    write_lines(chunk_answers_path(tmp_path, 2, 0), [answer(1, "a")])
    code = merge_main(["--answers-dir", str(tmp_path), "--num-chunks", "2", "--output", str(tmp_path / "m.jsonl")])
    assert code == 1
    assert "missing chunk answer file(s)" in capsys.readouterr().err

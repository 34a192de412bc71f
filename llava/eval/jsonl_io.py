"""Reading question/answer files with per-line errors, and crash-safe line-by-line answer writing."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

from toolkit_common.jsonl import (  # noqa: F401  (the eval modules' one import point for record files)
    InputFileError,
    JsonlAppender,
    LineError,
    drop_incomplete_tail,
    read_json,
    read_jsonl,
    read_jsonl_strict,
    write_jsonl,
)


def exit_code_on_input_error(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command-line ``main`` so an ``InputFileError`` prints ``error: ...`` and returns 1."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except InputFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return wrapped


AnswerKey = tuple[str, int, str]


def question_id_key(record: dict) -> str:
    """An answer's question id as text: the identity for scorers that match answers by id alone."""
    return str(record["question_id"])


def read_answers(
    path: str | Path, unique_by: Callable[[dict], Hashable] | None = None, allow_repeats: bool = False
) -> list[dict]:
    """Load an answers file for scoring, unchanged on disk: every line needs ``question_id`` and a text
    ``text``, and no two answers may share a key (``unique_by``, default ``answer_key``: a scorer that
    matches by id alone passes ``question_id_key``), else ``InputFileError`` (never "the last one wins").
    ``allow_repeats``: an answer repeated with the same text is no conflict (the merge drops it).
    A last line without its newline counts when it is a whole record; a torn one is an error."""
    records, errors = read_jsonl(path, required_fields=("question_id", "text"))
    if errors:
        raise InputFileError(f"{len(errors)} unusable line(s) in the answers file, first: {errors[0]}")
    key_of = unique_by or answer_key
    first_line: dict[Hashable, int] = {}
    for number, record in enumerate(records, start=1):
        if not isinstance(record["text"], str):
            raise InputFileError(f"{path}: answer {number} has a non-text 'text' ({type(record['text']).__name__})")
        key = key_of(record)
        if key in first_line and not (allow_repeats and records[first_line[key] - 1]["text"] == record["text"]):
            raise InputFileError(
                f"{path}: answers {first_line[key]} and {number} answer the same question (question_id "
                f"{record['question_id']!r}): the file mixes runs; answer again into a new file"
            )
        first_line[key] = number
    return records


def torn_tail(path: str | Path) -> int:
    """Bytes of a partial last line (no newline, not a JSON object: an interrupted write); 0 when the file
    ends in a newline or in a whole record. Reads only."""
    data = Path(path).read_bytes()
    tail = data[data.rfind(b"\n") + 1 :]
    if not tail.strip():
        return 0
    try:
        return 0 if isinstance(json.loads(tail), dict) else len(tail)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return len(tail)


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    """Write records to ``path`` all at once: a temporary file beside it, synced, then renamed over it, so a
    kill leaves the old file (or none), never part of the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")  # one name: a killed write's leftover is reused, not piled up
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def answer_key(record: dict) -> AnswerKey:
    """Identity of one answer for resume and merge: question id (as text), circular round and prompt.

    The prompt is part of the key because some LLaVA question files reuse ids (TextVQA's uses the
    image id, shared by several questions).
    """
    return str(record["question_id"]), int(record.get("round_idx", 0)), str(record.get("prompt", ""))


def completed_keys(path: str | Path) -> set[AnswerKey]:
    """Keys of the answers already in a (possibly interrupted) answers file."""
    path = Path(path)
    if not path.exists():
        return set()
    drop_incomplete_tail(path)
    records, _ = read_jsonl(path, required_fields=("question_id",))
    return {answer_key(record) for record in records}


def errors_path_for(answers_path: str | Path) -> Path:
    """The ``*.errors.jsonl`` file that sits next to an answers file."""
    answers_path = Path(answers_path)
    stem = answers_path.name.removesuffix(".jsonl")
    return answers_path.with_name(f"{stem}.errors.jsonl")


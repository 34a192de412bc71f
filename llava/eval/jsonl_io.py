"""Reading question/answer files with per-line errors, and crash-safe line-by-line answer writing."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
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


def read_answers(path: str | Path) -> list[dict]:
    """Load an answers file for scoring (every line needs ``question_id`` and ``text``)."""
    return read_jsonl_strict(path, required_fields=("question_id", "text"))


AnswerKey = tuple[str, int, str]


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


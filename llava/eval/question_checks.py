"""Checks on the questions of a run, made before any model loads: field types, image paths, unique ids.

A question whose fields cannot work (``"image": 7``, ``"image": ""``, a text that is not text, an image
path that leaves ``--image-folder``) gets a one-line *problem*; the run logs it to
``<answers>.errors.jsonl`` and skips it. Ids that are null or repeated make the whole run an error: one
of the answers would silently replace the other in the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.eval.jsonl_io import AnswerKey, InputFileError

ALLOW_OUTSIDE_FLAG = "--allow-outside-images"


def text_problem(name: str, value: Any) -> str | None:
    """Why a question's text field ``name`` is unusable (not a string), or None."""
    if not isinstance(value, str):
        return f"field {name!r} must be text, got {type(value).__name__} {value!r}"
    return None


def image_field_problem(value: Any) -> str | None:
    """Why a question's ``image`` field is unusable, or None (absent/null = a text-only question)."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"field 'image' must be a file name (text), got {type(value).__name__} {value!r}"
    if not value.strip():
        return "field 'image' is empty: name the image file, or leave the field out for a text-only question"
    return None


def image_path_problem(image_folder: str | Path, image: str, allow_outside: bool) -> str | None:
    """Why ``image_folder / image`` may not be opened (it leaves the folder), or None."""
    if allow_outside:
        return None
    folder = Path(image_folder).resolve()
    target = (folder / image).resolve()
    if target == folder or folder not in target.parents:
        return f"image {image!r} is outside --image-folder {image_folder} (pass {ALLOW_OUTSIDE_FLAG} to allow it)"
    return None


def image_problem(image_folder: str | Path, image: Any, allow_outside: bool) -> str | None:
    """The first problem of a question's ``image`` field and path, or None."""
    problem = image_field_problem(image)
    if problem is None and image is not None:
        problem = image_path_problem(image_folder, image, allow_outside)
    return problem


def check_unique_ids(question_ids: Sequence[Any], keys: Sequence[AnswerKey], source: str) -> None:
    """Refuse null ids and questions asked twice (same id and prompt): ``InputFileError``, one line.

    Question files may reuse an id for *different* prompts (TextVQA, MME); the answer key tells them
    apart, so only a repeated key (or a null id) is refused. Positions count the usable questions from 1."""
    problems = [f"question {index} has a null question_id"
                for index, question_id in enumerate(question_ids, start=1) if question_id is None]
    seen: dict[AnswerKey, int] = {}
    for index, (question_id, key) in enumerate(zip(question_ids, keys, strict=True), start=1):
        if question_id is not None and key in seen:
            problems.append(f"question {index} repeats question {seen[key]} (question_id {question_id!r}, same prompt)")
        seen.setdefault(key, index)
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise InputFileError(
            f"{source}: {'; '.join(problems[:3])}{more}: every question needs its own non-null id (nothing was answered)"
        )

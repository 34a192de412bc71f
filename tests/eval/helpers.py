"""Small builders for synthetic benchmark files used by the eval tests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from PIL import Image


def write_lines(path: Path, records: Iterable[dict]) -> Path:
    """Write records as JSONL and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def read_lines(path: Path) -> list[dict]:
    """Read a JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def answer(question_id, text: str, prompt: str = "", **extra) -> dict:
    """A minimal answers-file record."""
    return {"question_id": question_id, "prompt": prompt, "text": text, **extra}


def make_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    """Save a solid-colour image with a darker square in it (so images differ in content)."""
    image = Image.new("RGB", size, colour)
    image.paste((colour[2], colour[0], colour[1]), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path

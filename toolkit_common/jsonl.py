"""JSON-lines record files: reading with per-line errors, crash-safe appends, cutting a partial last line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LineError:
    """One unusable line of an input file, with its 1-based line number."""

    path: str
    line_number: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.message}"


class InputFileError(ValueError):
    """An input file that cannot be used (missing, malformed, or inconsistent with another input)."""


def read_jsonl(path: str | Path, required_fields: Iterable[str] = ()) -> tuple[list[dict], list[LineError]]:
    """Parse a JSON-lines file into records, collecting one ``LineError`` per bad line.

    Blank lines are skipped; a line that is not a JSON object, or lacks a required field, is
    reported with its line number and left out of the records.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    required = tuple(required_fields)
    records: list[dict] = []
    errors: list[LineError] = []
    with path.open("rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.append(LineError(str(path), line_number, f"not UTF-8 text (byte {raw_line[exc.start]:#04x} at column {exc.start + 1})"))
                continue
            record, problem = _parse_record_line(line, required)
            if problem is not None:
                errors.append(LineError(str(path), line_number, problem))
            else:
                records.append(record)
    return records, errors


def _parse_record_line(line: str, required: tuple[str, ...]) -> tuple[dict, str | None]:
    """One line as a JSON object, or the reason it is not a usable record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return {}, f"invalid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(record, dict):
        return {}, f"expected a JSON object, got {type(record).__name__}"
    missing = [name for name in required if name not in record]
    if missing:
        return {}, f"missing field(s): {', '.join(missing)}"
    return record, None


def read_json(path: str | Path) -> Any:
    """Load one JSON document, with the file name in the error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from exc


def read_jsonl_strict(path: str | Path, required_fields: Iterable[str] = ()) -> list[dict]:
    """Like ``read_jsonl`` but any bad line is an ``InputFileError`` naming every bad line."""
    records, errors = read_jsonl(path, required_fields)
    if errors:
        raise InputFileError(f"{len(errors)} unusable line(s):\n" + "\n".join(str(error) for error in errors))
    return records


def drop_incomplete_tail(path: str | Path) -> int:
    """Cut a partial last line (left by a killed run) off a JSONL file; returns the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    complete_end = data.rfind(b"\n") + 1
    tail = data[complete_end:]
    if not tail:
        return 0
    with path.open("r+b") as handle:
        handle.truncate(complete_end)
    return len(tail)


def drop_records_from_step(path: str | Path, step: int) -> None:
    """Keep only the records of a step log with ``"step" < step`` (a resumed run writes the others again); an
    ``InputFileError`` naming the lines that are no step record (cut a torn last line first: ``drop_incomplete_tail``)."""
    path = Path(path)
    if not path.exists():
        return
    records = read_jsonl_strict(path, required_fields=("step",))
    write_jsonl(path, [record for record in records if record["step"] < step])


class JsonlAppender:
    """Appends records to a JSONL file, one flushed line each, so a killed run loses at most a line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Write one record as one line and push it to the OS."""
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write records to a new JSONL file (replacing it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

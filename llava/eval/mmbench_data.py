"""Reading MMBench / MMBench-CN TSV files (``index, question, hint, A..E, answer?, category, image``)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from PIL import Image

from llava.eval.jsonl_io import InputFileError, LineError
from llava.mm_utils import decode_base64_rgb

OPTION_COLUMNS = "ABCDE"
REQUIRED_COLUMNS = ("index", "question", "image", "A", "B")


def is_blank(value: str | None) -> bool:
    """True for a missing cell (empty, or pandas' ``nan``)."""
    return value is None or value.strip() == "" or value.strip().lower() == "nan"


def row_options(row: dict[str, str]) -> list[str]:
    """The row's options A, B, ... up to the first blank one."""
    options = []
    for column in OPTION_COLUMNS:
        if is_blank(row.get(column)):
            break
        options.append(row[column])
    return options


def decode_base64_image(data: str) -> Image.Image:
    """An RGB image from MMBench's base64 ``image`` cell (every Pillow mode decoded faithfully)."""
    return decode_base64_rgb(data)


def _row_problem(row: dict[str, str]) -> str | None:
    """Why a TSV row cannot be asked, or None."""
    blank = [name for name in REQUIRED_COLUMNS if is_blank(row.get(name))]
    if blank:
        return f"empty cell(s): {', '.join(blank)}"
    if not row["index"].strip().lstrip("-").isdigit():
        return f"index {row['index']!r} is not an integer"
    return None


def read_mmbench_tsv(path: str | Path) -> tuple[list[dict[str, str]], list[LineError]]:
    """Rows of an MMBench TSV, and one error per row lacking a required cell (line numbers from 2)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    csv.field_size_limit(sys.maxsize)
    try:
        return _read_rows(path)
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from exc


def _read_rows(path: Path) -> tuple[list[dict[str, str]], list[LineError]]:
    """``read_mmbench_tsv`` on an existing file."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing_columns = [name for name in REQUIRED_COLUMNS if name not in (reader.fieldnames or [])]
        if missing_columns:
            raise InputFileError(f"{path}: missing column(s) {', '.join(missing_columns)}")
        rows, errors = [], []
        for row in reader:
            problem = _row_problem(row)
            if problem:
                errors.append(LineError(str(path), reader.line_num, problem))
            else:
                rows.append(row)
    return rows, errors

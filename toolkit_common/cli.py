"""Command-line errors in argparse's style, on one line (no usage block): ``prog: error: message``, exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn


def setting_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Stop with exit status 2 and one line naming what was wrong and what is valid."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def missing_file_problem(flag: str, path: str | Path, how_to_make: str = "") -> str | None:
    """``None`` when ``path`` is a file, else the one-line reason (with how to make the file, if given)."""
    if Path(path).is_file():
        return None
    return f"{flag} {path}: no such file" + (f" ({how_to_make})" if how_to_make else "")

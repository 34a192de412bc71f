"""Command-line errors in argparse's style, on one line (no usage block): ``prog: error: message``, exit 2."""

from __future__ import annotations

import argparse
from typing import NoReturn


def setting_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Stop with exit status 2 and one line naming what was wrong and what is valid."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")

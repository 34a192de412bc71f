"""Command-line errors in argparse's style, on one line (no usage block): ``prog: error: message``, exit 2; and
the ranges of numeric flags (``check_ranges``), checked before any work."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric flag: ``low <= value`` (``low < value`` when ``low_open``), ``value <= high``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        low = "(-inf" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}]"
        return f"{low}, {high}"


AT_LEAST_0, AT_LEAST_1 = Range(0), Range(1)
POSITIVE, FRACTION, SHARE = Range(0, low_open=True), Range(0, 1, low_open=True), Range(0, 1)
"""Common ranges: counts (>= 0, >= 1), positive reals, fractions in (0, 1] and shares in [0, 1]."""


def range_problems(args: argparse.Namespace, ranges: dict[str, Range]) -> list[str]:
    """One line per flag (``ranges`` keyed by argparse ``dest``) whose value, or any of its values, lies outside
    its range; a flag left at None is not checked."""
    problems = []
    for dest, valid in ranges.items():
        value = getattr(args, dest)
        values = value if isinstance(value, list | tuple) else [value]
        bad = [v for v in values if v is not None and not valid.holds(v)]
        if bad:
            flag = "--" + dest.replace("_", "-")
            problems.append(f"{flag} {' '.join(f'{v:g}' for v in bad)}: must lie in {valid}")
    return problems


def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace, ranges: dict[str, Range]) -> None:
    """``setting_error`` (one line, exit 2) naming every flag outside its range (``range_problems``)."""
    if problems := range_problems(args, ranges):
        setting_error(parser, "; ".join(problems))

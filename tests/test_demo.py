"""`make demo` runs end to end on the tiny model and reports what it kept."""

import subprocess
import sys

import torch

from llava.demo import GRID, kept_patch_map


def test_kept_patch_map_marks_kept_patches():
    lines = kept_patch_map(torch.tensor([10, 11, 10 + GRID]), span_start=10).splitlines()
    assert len(lines) == GRID
    assert lines[0].strip().startswith("##.") and lines[1].strip().startswith("#.")
    assert sum(line.count("#") for line in lines) == 3


def test_demo_runs_and_reports_budget():
    result = subprocess.run(
        [sys.executable, "-m", "llava.demo", "--budgets", "64", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "budget  64: keeps R=30 of 576 at layer 2" in result.stdout
    assert result.stdout.count("equivalent tokens 64.") == 3

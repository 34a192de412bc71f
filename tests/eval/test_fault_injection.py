"""Fault injection: kill the loader, the ablation driver and train_pruner at random moments, resume, and
check that the result equals an uninterrupted run (every question exactly once, every step once).

Marked slow (``make test-slow``): each trial starts fresh interpreters. Kill times are drawn by a
seeded generator over the span of an uninterrupted run, so they fall during start-up and model load as
well as mid-question; after some kills half a JSON line is appended (an interrupted write).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.eval.benchmark_layout import build_eval_dir
from tests.eval.helpers import make_image, read_lines, write_lines
from tests.eval.test_scripts import ROOT
from tests.train.test_training import small_config

pytestmark = pytest.mark.slow
TRIALS = 6
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_killed_until_done(command, span_s: float, rng: random.Random, on_kill=None, later_from: float = 0.0) -> int:
    """Run ``command`` (a list, or a callable giving the list for each attempt) again and again, SIGKILLing
    it after a random delay, until one run ends by itself; return the number of kills. The first attempt
    is killed within [0.2, 0.8] x ``span_s`` (so every trial is interrupted at least once), later ones
    within [``later_from``, 1] x ``span_s`` (a command whose start-up alone takes a share of the span, as the
    driver planning its configurations, would otherwise be killed in start-up for many attempts)."""
    kills = 0
    attempt = 0
    while True:
        argv = command() if callable(command) else command
        delay = rng.uniform(0.2, 0.8) * span_s if attempt == 0 else rng.uniform(later_from, 1.0) * span_s
        attempt += 1
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=errors,
                                       start_new_session=True)
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                kills += 1
                if on_kill is not None:
                    on_kill()
                continue
            errors.seek(0)
            stderr = errors.read()[-3000:].decode(errors="replace")
        assert process.returncode == 0, f"{argv} exited {process.returncode}: {stderr}"
        return kills


def timed(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def without_timing(records: list[dict]) -> list[dict]:
    return [{**r, "metadata": {k: v for k, v in r["metadata"].items() if k != "prefill_ms"}} for r in records]


def test_loader_killed_at_random_points_resumes_to_the_uninterrupted_file(tmp_path):
    images = tmp_path / "images"
    questions = []
    for index in range(6):
        make_image(images / f"{index}.png", (40 + 10 * index, 50), (40 * index, 100, 200 - 30 * index))
        questions.append({"question_id": index, "image": f"{index}.png", "text": f"what is {index}?"})
    question_file = write_lines(tmp_path / "q.jsonl", questions)
    base = [sys.executable, "-m", "llava.eval.model_vqa_loader", "--question-file", str(question_file),
            "--image-folder", str(images), "--model-path", "tiny-random-llava", "--max_new_tokens", "12",
            "--pruning_method", "fastv", "--visual_token_num", "64"]
    reference = tmp_path / "reference.jsonl"
    span = timed([*base, "--answers-file", str(reference)])
    rng = random.Random(0)
    total_kills = 0
    for trial in range(TRIALS):
        answers = tmp_path / f"trial{trial}.jsonl"

        def interrupted_write(path=answers):
            if path.exists() and rng.random() < 0.5:
                with path.open("a") as handle:
                    handle.write('{"question_id": 3, "prompt": "what')

        total_kills += run_killed_until_done([*base, "--answers-file", str(answers)], span, rng, interrupted_write)
        records = read_lines(answers)
        assert sorted(r["question_id"] for r in records) == list(range(6)), f"trial {trial}"
        assert without_timing(records) == without_timing(read_lines(reference)), f"trial {trial}"
    assert total_kills >= TRIALS  # the kills really happened
    print(f"loader: {TRIALS} trials, {total_kills} kills, every file equal to the uninterrupted run")


def test_ablation_driver_killed_at_random_points_resumes_to_the_same_table(tmp_path):
    def driver(eval_dir: Path) -> list[str]:
        return ["env", f"EVAL_DIR={eval_dir}", "MODEL_PATH=tiny-random-llava", f"PYTHON={sys.executable}",
                "EXTRA_ARGS=--max_new_tokens 2", "DATASETS=pope", "METHODS=fastv random", "TOKENS=64",
                "bash", str(ROOT / "eval.sh")]

    reference_dir = build_eval_dir(tmp_path / "reference")
    span = timed(driver(reference_dir))
    reference = (reference_dir / "summary" / "results.csv").read_text()
    rng = random.Random(1)
    kills = 0
    for trial in range(2):
        eval_dir = build_eval_dir(tmp_path / f"trial{trial}")
        kills += run_killed_until_done(driver(eval_dir), span, rng, later_from=0.3)
        table = (eval_dir / "summary" / "results.csv").read_text()
        assert drop_timing_columns(table) == drop_timing_columns(reference), f"trial {trial}"
        for merged in eval_dir.rglob("merge.jsonl"):
            ids = [(r["question_id"], r["prompt"]) for r in read_lines(merged)]
            assert len(ids) == len(set(ids)), merged
    print(f"driver: 2 trials, {kills} kills, same table")


def drop_timing_columns(csv_text: str) -> list[list[str]]:
    rows = [line.split(",") for line in csv_text.strip().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if not name.startswith("prefill_ms")]  # the median and its spread
    return [[row[i] for i in keep] for row in rows]


def test_train_pruner_killed_at_random_points_resumes_to_the_uninterrupted_checkpoint(tmp_path):
    def command(run: Path) -> list[str]:
        """Resume once a checkpoint exists; before that, start the run folder again (``--overwrite``)."""
        config = tmp_path / f"{run.name}.yaml"
        config.write_text(yaml.safe_dump(small_config(run, 6)))
        flag = ["--resume"] if (run / "checkpoint.pt").exists() else ["--overwrite"] if run.exists() else []
        return [sys.executable, "-m", "llava.train.train_pruner", "--config", str(config), *flag]

    reference = tmp_path / "reference"
    span = timed(command(reference))
    expected = torch.load(reference / "checkpoint.pt", weights_only=True)
    rng = random.Random(2)
    kills = 0
    for trial in range(3):
        run = tmp_path / f"killed{trial}"
        kills += run_killed_until_done(lambda run=run: command(run), span, rng)
        got = torch.load(run / "checkpoint.pt", weights_only=True)
        assert got["step"] == expected["step"] == 6
        for key in ("pruner", "discriminator"):
            for name, tensor in expected[key].items():
                torch.testing.assert_close(got[key][name], tensor, msg=f"trial {trial}: {key}.{name}")
        steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
        assert steps == list(range(6)), f"trial {trial}"
    assert kills >= 3  # every trial was interrupted
    print(f"train_pruner: 3 trials, {kills} kills, every checkpoint equal to the uninterrupted run")

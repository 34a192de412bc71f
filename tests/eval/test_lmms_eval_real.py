"""The real lmms-eval (0.7.3) runs ``--model llava_prune`` on the task ``python -m llava.eval.lmms_local_task``
writes, from the command line as a user runs both, and agrees with the project's loader.

Marked ``lmms_eval``: ``make test-lmms`` installs lmms-eval and runs it. The task is the shapes POPE
benchmark; the model is the shipped shapes VLM (the tiny random LLaVA when the checkpoint is absent).
Every reply, the accuracy and each sample's pruning record must equal those of ``model_vqa_loader`` on the
same questions at the same batch size, unpruned (one by one) and with FastV at 64 tokens (batches of 4);
lmms-eval's printed table (``pytablewriter``) and the run's pruning summary in its aggregated result too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llava.eval import model_vqa_loader
from llava.eval.lmms_local_task import pope_correct
from llava.shapes.benchmarks import write_pope
from tests.eval.helpers import read_lines

pytestmark = pytest.mark.lmms_eval
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "playground" / "models" / "shapes-llava"
MODEL = str(SHIPPED) if (SHIPPED / "config.json").is_file() else "tiny-random-llava"
TASK = "shapes_pope_test"
QUESTIONS = 12
MAX_NEW_TOKENS = 8


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root, offline, as a user runs it; fails on a non-zero exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    completed = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, f"python -m {module} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return completed


@pytest.fixture(scope="module")
def pope_task(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The benchmark folder and the task folder the generator's command line wrote for it."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (make test-lmms)")
    root = tmp_path_factory.mktemp("lmms")
    write_pope(root / "pope", QUESTIONS, seed=0)
    run_module(
        "llava.eval.lmms_local_task", "--format", "pope", "--benchmark", str(root / "pope"), "--task", TASK,
        "--output", str(root / "tasks"), "--max-new-tokens", str(MAX_NEW_TOKENS),
    )
    return root / "pope", root / "tasks"


def run_lmms_eval(tasks: Path, output: Path, model_args: str, batch_size: int) -> tuple[dict[str, Any], list[dict], str]:
    """``python -m lmms_eval`` on the task folder: its aggregated result, logged samples and printed output."""
    completed = run_module(
        "lmms_eval", "--model", "llava_prune", "--model_args", model_args, "--tasks", TASK,
        "--include_path", str(tasks), "--batch_size", str(batch_size), "--output_path", str(output), "--log_samples",
    )
    (results_file,) = output.rglob("*_results.json")
    (samples_file,) = output.rglob(f"*_samples_{TASK}.jsonl")
    return json.loads(results_file.read_text(encoding="utf-8")), read_lines(samples_file), completed.stdout


def run_loader(benchmark: Path, answers: Path, pruning: dict, batch_size: int) -> dict[str, dict]:
    """``model_vqa_loader``'s answer records on the same questions, by question id."""
    loader_args = [item for key, value in pruning.items() for item in (f"--{key}", str(value))]
    assert model_vqa_loader.main(
        ["--model-path", MODEL, "--question-file", str(benchmark / "llava_pope_test.jsonl"),
         "--image-folder", str(benchmark / "val2014"), "--answers-file", str(answers), "--temperature", "0",
         "--conv-mode", "vicuna_v1", "--max_new_tokens", str(MAX_NEW_TOKENS), "--batch-size", str(batch_size),
         *loader_args]
    ) == 0
    return {str(record["question_id"]): record for record in read_lines(answers)}


def test_generated_utils_import_the_installed_module(pope_task) -> None:
    _, tasks = pope_task
    assert (tasks / f"{TASK}_utils.py").read_text(encoding="utf-8").startswith("from llava.eval.lmms_local_task import ")


@pytest.mark.parametrize(
    ("pruning", "batch_size"),
    [({}, 1), ({"pruning_method": "fastv", "visual_token_num": 64}, 4)],
    ids=["unpruned-batch1", "fastv64-batch4"],
)
def test_lmms_eval_on_the_generated_task_equals_the_project_loader(
    pope_task, tmp_path: Path, pruning: dict, batch_size: int
) -> None:
    benchmark, tasks = pope_task
    model_args = ",".join([f"pretrained={MODEL}", *(f"{key}={value}" for key, value in pruning.items())])
    results, samples, printed = run_lmms_eval(tasks, tmp_path / "lmms", model_args, batch_size)
    assert f"|{TASK}|" in printed  # the results table (pytablewriter)
    documents = read_lines(tasks / f"{TASK}.jsonl")  # lmms-eval's doc_id is the line number
    by_id = {documents[sample["doc_id"]]["question_id"]: sample for sample in samples}
    loader = run_loader(benchmark, tmp_path / "answers.jsonl", pruning, batch_size)

    assert len(by_id) == QUESTIONS
    assert {qid: sample["filtered_resps"] for qid, sample in by_id.items()} == {
        qid: record["text"] for qid, record in loader.items()
    }
    labels = {qid: sample["target"] for qid, sample in by_id.items()}
    loader_accuracy = 100 * sum(pope_correct(loader[qid]["text"], labels[qid]) for qid in labels) / len(labels)
    assert results["results"][TASK]["accuracy,none"] == pytest.approx(loader_accuracy)

    records = {qid: sample["token_counts"][0]["pruning"] for qid, sample in by_id.items()}
    for qid, record in records.items():
        assert record["equivalent_tokens"] == loader[qid]["metadata"]["equivalent_tokens"]
        assert record["kept_per_layer"] == loader[qid]["metadata"]["kept_per_layer"]
        assert (record["flops_ratio"] < 1) == bool(pruning)
    summary = results["throughput"]
    mean = sum(record["equivalent_tokens"] for record in records.values()) / QUESTIONS
    assert summary["avg_equivalent_tokens"] == pytest.approx(mean)
    assert summary["avg_flops_ratio"] == pytest.approx(sum(record["flops_ratio"] for record in records.values()) / QUESTIONS)

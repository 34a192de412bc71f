"""The real lmms-eval (0.7.3) runs ``--model llava_prune`` on a local task and agrees with the project's loader.

Marked ``lmms_eval``: ``make test-lmms`` installs lmms-eval and runs it. The task is the shapes POPE
benchmark written by ``llava.eval.lmms_local_task``; the model is the shipped shapes VLM (the tiny random
LLaVA when the checkpoint is absent). Every reply and the accuracy must equal those of
``model_vqa_loader`` on the same questions, unpruned and with FastV at 64 tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llava.eval import model_vqa_loader
from llava.eval.lmms_local_task import pope_correct, write_task
from llava.shapes.benchmarks import write_pope
from tests.eval.helpers import read_lines

pytestmark = pytest.mark.lmms_eval
SHIPPED = Path(__file__).resolve().parents[2] / "playground" / "models" / "shapes-llava"
MODEL = str(SHIPPED) if (SHIPPED / "config.json").is_file() else "tiny-random-llava"
QUESTIONS = 12
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def pope_task(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lmms")
    write_pope(root / "pope", QUESTIONS, seed=0)
    write_task(root / "pope", "pope", "shapes_pope_test", root / "tasks", max_new_tokens=MAX_NEW_TOKENS)
    return root / "pope", root / "tasks"


@pytest.mark.parametrize("pruning", [{}, {"pruning_method": "fastv", "visual_token_num": 64}], ids=["unpruned", "fastv64"])
def test_lmms_eval_replies_and_accuracy_equal_the_project_loader(pope_task, tmp_path: Path, pruning: dict) -> None:
    lmms_evaluator = pytest.importorskip("lmms_eval.evaluator", reason="lmms-eval is not installed (make test-lmms)")
    from lmms_eval.tasks import TaskManager

    benchmark, tasks = pope_task
    model_args = ",".join([f"pretrained={MODEL}", *(f"{key}={value}" for key, value in pruning.items())])
    output = lmms_evaluator.simple_evaluate(
        model="llava_prune", model_args=model_args, tasks=["shapes_pope_test"],
        task_manager=TaskManager(include_path=str(tasks)), log_samples=True, batch_size=1,
    )
    samples = output["samples"]["shapes_pope_test"]
    lmms_replies = {sample["doc"]["question_id"]: sample["filtered_resps"][0] for sample in samples}
    labels = {sample["doc"]["question_id"]: sample["target"] for sample in samples}

    answers = tmp_path / "answers.jsonl"
    loader_args = [item for key, value in pruning.items() for item in (f"--{key}", str(value))]
    assert model_vqa_loader.main(
        ["--model-path", MODEL, "--question-file", str(benchmark / "llava_pope_test.jsonl"),
         "--image-folder", str(benchmark / "val2014"), "--answers-file", str(answers), "--temperature", "0",
         "--conv-mode", "vicuna_v1", "--max_new_tokens", str(MAX_NEW_TOKENS), *loader_args]
    ) == 0
    loader_replies = {str(record["question_id"]): record["text"] for record in read_lines(answers)}

    assert len(lmms_replies) == QUESTIONS
    assert lmms_replies == loader_replies
    loader_accuracy = 100 * sum(pope_correct(loader_replies[qid], labels[qid]) for qid in labels) / len(labels)
    assert output["results"]["shapes_pope_test"]["accuracy,none"] == pytest.approx(loader_accuracy)

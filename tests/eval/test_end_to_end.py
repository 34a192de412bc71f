"""Synthetic benchmarks answered end to end by the tiny random LLaVA through the entry points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llava.eval import model_vqa_loader, model_vqa_mmbench, model_vqa_science, run_loop
from llava.eval.jsonl_io import errors_path_for
from llava.eval.scorers import mmbench, scienceqa
from tests.eval.helpers import make_image, read_lines, write_lines

FAST = ["--model-path", "tiny-random-llava", "--max_new_tokens", "3"]
FASTV_64 = ["--pruning_method", "fastv", "--visual_token_num", "64"]


@pytest.fixture
def vqa_benchmark(tmp_path: Path) -> dict[str, Path]:
    """Four questions on four generated images of different shapes (and prompts of different lengths)."""
    images = tmp_path / "images"
    questions = []
    for index in range(4):
        make_image(images / f"{index}.png", (40 + 30 * index, 60), (50 * index, 200 - 30 * index, 90))
        text = f"What is shown {index}?" + " Look closely." * index  # different lengths: batches get padding
        questions.append({"question_id": 100 + index, "image": f"{index}.png", "text": text})
    return {"images": images, "questions": write_lines(tmp_path / "questions.jsonl", questions)}


def run_loader(benchmark: dict[str, Path], answers: Path, *extra: str) -> int:
    return model_vqa_loader.main(
        ["--question-file", str(benchmark["questions"]), "--image-folder", str(benchmark["images"]),
         "--answers-file", str(answers), *FAST, *extra]
    )


def without_timing(records: list[dict]) -> list[dict]:
    """Answers with the measured prefill time removed (the only field that differs run to run)."""
    return [{**record, "metadata": {k: v for k, v in record["metadata"].items() if k != "prefill_ms"}}
            for record in records]


def check_llava_format_with_pruning_metadata(records: list[dict]) -> None:
    assert [record["question_id"] for record in records] == [100, 101, 102, 103]
    first = records[0]
    assert list(first)[:3] == ["question_id", "prompt", "text"]
    assert {"answer_id", "model_id", "metadata"} <= set(first)
    assert first["prompt"] == "What is shown 0?"
    assert first["model_id"] == "tiny-random-llava"
    metadata = first["metadata"]
    assert metadata["pruning_method"] == "fastv" and metadata["method"] == "fastv"
    assert metadata["visual_token_num"] == 64
    assert metadata["equivalent_tokens"] == pytest.approx(64, abs=1)
    assert metadata["kept_per_layer"][-1] < 576 and metadata["flops"] > 0 and metadata["prefill_ms"] > 0


def test_interrupted_runs_resume_to_the_same_file(vqa_benchmark, tmp_path, monkeypatch) -> None:
    reference = tmp_path / "reference.jsonl"
    assert run_loader(vqa_benchmark, reference, *FASTV_64) == 0
    check_llava_format_with_pruning_metadata(read_lines(reference))
    assert not errors_path_for(reference).exists()

    # 1) a run stopped after two answers (KeyboardInterrupt inside the loop) ...
    interrupted = tmp_path / "interrupted.jsonl"
    real_answer_batch = run_loop.answer_batch
    calls = []

    def stop_on_third_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_answer_batch(*args, **kwargs)

    monkeypatch.setattr(run_loop, "answer_batch", stop_on_third_call)
    with pytest.raises(KeyboardInterrupt):
        run_loader(vqa_benchmark, interrupted, *FASTV_64)
    monkeypatch.setattr(run_loop, "answer_batch", real_answer_batch)
    assert len(read_lines(interrupted)) == 2
    # 2) ... and killed half way through writing the third line
    with interrupted.open("a") as handle:
        handle.write(json.dumps(read_lines(reference)[2])[:25])

    assert run_loader(vqa_benchmark, interrupted, *FASTV_64) == 0
    assert without_timing(read_lines(interrupted)) == without_timing(read_lines(reference))
    assert run_loader(vqa_benchmark, interrupted, *FASTV_64) == 0  # nothing left: no duplicates
    assert len(read_lines(interrupted)) == 4


def test_bad_lines_and_missing_images_are_logged_and_skipped(vqa_benchmark, tmp_path, capsys) -> None:
    with vqa_benchmark["questions"].open("a") as handle:
        handle.write('{"question_id": 200, "image": "nope.png", "text": "gone?"}\n')
        handle.write("not json\n")
        handle.write('{"question_id": 201}\n')
    (vqa_benchmark["images"] / "3.png").write_bytes(b"broken")
    answers = tmp_path / "a.jsonl"
    assert run_loader(vqa_benchmark, answers) == 1  # answers kept, but the run is not complete
    assert [record["question_id"] for record in read_lines(answers)] == [100, 101, 102]
    errors = read_lines(errors_path_for(answers))
    by_stage = {(error["stage"], error.get("question_id", error.get("line"))) for error in errors}
    assert by_stage == {("image", 103), ("image", 200), ("question_file", 6), ("question_file", 7)}
    assert "missing field(s): text" in {error["error"] for error in errors}
    stderr = capsys.readouterr().err
    assert "nope.png" in stderr and "4 error(s)" in stderr and "4 question(s) failed" in stderr
    assert run_loader(vqa_benchmark, answers) == 1  # the failures are retried (still failing), logged afresh once
    assert len(read_lines(errors_path_for(answers))) == 4 and len(read_lines(answers)) == 3


def test_unknown_method_is_a_clear_error(vqa_benchmark, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:  # checked before the model loads, argparse style
        run_loader(vqa_benchmark, tmp_path / "a.jsonl", "--pruning_method", "nonsense")
    assert exit_info.value.code == 2
    assert "--pruning_method 'nonsense' is unknown; valid: " in capsys.readouterr().err


def test_fine_head_and_dynamic_selection_flags_reach_the_engine(vqa_benchmark, tmp_path) -> None:
    first_two_questions = ("--num-chunks", "2", "--chunk-idx", "0")
    fine = tmp_path / "fine.jsonl"
    assert run_loader(vqa_benchmark, fine, "--pruning_method", "fastv_fine_head", "--visual_token_num", "128",
                      "--H", "2", "--head-strategy", "entropy", *first_two_questions) == 0
    metadata = read_lines(fine)[0]["metadata"]
    assert (metadata["method"], metadata["H"], metadata["head_strategy"]) == ("fastv_fine_head", 2, "entropy")
    dynamic = tmp_path / "dynamic.jsonl"
    assert run_loader(vqa_benchmark, dynamic, "--visual_token_num", "128", "--enable-dynamic-selection",
                      "--debug-mode", "True", *first_two_questions) == 0
    metadata = read_lines(dynamic)[0]["metadata"]
    assert metadata["method"] == "ablation_a" and metadata["dynamic_selection"] is True


def test_chunks_cover_the_questions(vqa_benchmark, tmp_path) -> None:
    for index in range(2):
        chunk_args = ("--num-chunks", "2", "--chunk-idx", str(index))
        assert run_loader(vqa_benchmark, tmp_path / f"2_{index}.jsonl", *chunk_args) == 0
    ids = [record["question_id"] for index in range(2) for record in read_lines(tmp_path / f"2_{index}.jsonl")]
    assert ids == [100, 101, 102, 103]


def test_answer_batch_is_batch_invariant_on_stock_llava() -> None:
    """The batching code itself (left padding, masks, decoding) is exact on transformers' own LLaVA."""
    from PIL import Image
    from transformers import LlavaForConditionalGeneration

    from llava.eval.inference import GenerationSettings, ModelBundle, answer_batch
    from llava.model.builder import load_pretrained_model

    tokenizer, pruning_model, processor, _ = load_pretrained_model("tiny-random-llava")
    stock = LlavaForConditionalGeneration(pruning_model.config).eval()
    stock.load_state_dict(pruning_model.state_dict())
    bundle = ModelBundle(tokenizer, stock, processor, torch.device("cpu"), torch.float32)
    settings = GenerationSettings(max_new_tokens=4)
    questions = ["What?", "Describe the picture in detail.", "How many objects are in this image here?"]
    images = [Image.new("RGB", (60 + 9 * i, 40 + 13 * i), (70 * i, 120, 200 - 50 * i)) for i in range(3)]
    one_by_one = [answer_batch(bundle, settings, [q], [image])[0][0] for q, image in zip(questions, images, strict=True)]
    batched, _ = answer_batch(bundle, settings, questions, images)
    assert batched == one_by_one
    assert len(set(one_by_one)) > 1  # the random model does not answer everything alike


def test_batch_size_does_not_change_answers(vqa_benchmark, tmp_path) -> None:
    """Left-padded batches (prompts differ in length) answer as one-by-one runs, pruned and unpruned."""
    assert len({len(q["text"]) for q in read_lines(vqa_benchmark["questions"])}) == 4
    for label, method_args in (("fastv", FASTV_64), ("vanilla", ())):
        single, batched = tmp_path / f"{label}_b1.jsonl", tmp_path / f"{label}_b3.jsonl"
        assert run_loader(vqa_benchmark, single, *method_args) == 0
        assert run_loader(vqa_benchmark, batched, *method_args, "--batch-size", "3") == 0
        assert [r["text"] for r in read_lines(batched)] == [r["text"] for r in read_lines(single)]
    vanilla = read_lines(tmp_path / "vanilla_b1.jsonl")[0]["metadata"]
    assert vanilla["pruning_method"] is None and vanilla["method"] is None
    assert vanilla["equivalent_tokens"] == 576 and vanilla["flops"] > 0 and vanilla["prefill_ms"] > 0


def test_science_runs_text_only_questions_unpruned_and_scores(tmp_path) -> None:
    make_image(tmp_path / "images" / "1.png", (50, 30), (10, 200, 30))
    entries = [
        {"id": "1", "image": "1.png", "conversations": [{"from": "human", "value": "<image>\nWhich? A. x B. y"}]},
        {"id": "2", "conversations": [{"from": "human", "value": "Which one? A. x B. y"}]},
        {"id": "3"},
    ]
    (tmp_path / "q.json").write_text(json.dumps(entries))
    answers = tmp_path / "a.jsonl"
    code = model_vqa_science.main(
        ["--question-file", str(tmp_path / "q.json"), "--image-folder", str(tmp_path / "images"),
         "--answers-file", str(answers), "--single-pred-prompt", *FAST, *FASTV_64]
    )
    assert code == 1  # entry 3 is unusable
    with_image, text_only = read_lines(answers)
    assert with_image["prompt"] == "Which? A. x B. y\n" + model_vqa_science.SINGLE_PREDICTION_PROMPT
    assert with_image["metadata"]["method"] == "fastv"
    assert text_only["metadata"]["method"] is None and text_only["metadata"]["equivalent_tokens"] == 0
    assert "entry 3: missing conversations" in read_lines(errors_path_for(answers))[0]["error"]

    problems = {"1": {"choices": ["x", "y"], "answer": 0, "image": "1.png"}, "2": {"choices": ["x", "y"], "answer": 1}}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2"]}))
    assert scienceqa.main(["--base-dir", str(tmp_path), "--result-file", str(answers)]) == 0


def test_mmbench_all_rounds_then_circular_scoring(tmp_path) -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (30, 50), (200, 10, 10)).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n"
    rows = [f"7\tWhat colour?\tnan\tred\tblue\tgreen\t\tA\tcolour\t{encoded}\n",
            f"8\tShape?\tLook closely.\tround\tsquare\t\t\tB\tshape\t{encoded}\n",
            "9\tNo image?\t\tx\ty\t\t\tA\tshape\t\n"]
    tsv = tmp_path / "mmbench.tsv"
    tsv.write_text(header + "".join(rows))
    answers = tmp_path / "a.jsonl"
    code = model_vqa_mmbench.main(
        ["--question-file", str(tsv), "--answers-file", str(answers), "--all-rounds", "--single-pred-prompt",
         *FAST, *FASTV_64]
    )
    assert code == 1  # row 9 has no image
    records = read_lines(answers)
    assert [(r["question_id"], r["round_idx"]) for r in records] == [(7, 0), (7, 1), (7, 2), (8, 0), (8, 1)]
    assert records[1]["options"] == ["blue", "green", "red"]
    assert records[3]["prompt"].startswith("Look closely.\nShape?\nA. round\nB. square\n")
    assert "empty cell(s): image" in read_lines(errors_path_for(answers))[0]["error"]

    upload = tmp_path / "upload.tsv"
    result_json = tmp_path / "r.json"
    assert mmbench.main(["--annotation-file", str(tsv), "--result-file", str(answers), "--upload-file",
                         str(upload), "--result-json", str(result_json)]) == 0
    result = json.loads(result_json.read_text())
    assert result["primary_metric"] == "circular_accuracy"
    assert upload.read_text().splitlines()[0].endswith("\tprediction")


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_file(vqa_benchmark, tmp_path) -> None:
    args = ["--question-file", str(vqa_benchmark["questions"]), "--image-folder", str(vqa_benchmark["images"]),
            "--model-path", "tiny-random-llava", "--max_new_tokens", "24", *FASTV_64]
    reference, killed = tmp_path / "reference.jsonl", tmp_path / "killed.jsonl"
    assert model_vqa_loader.main([*args, "--answers-file", str(reference)]) == 0
    process = subprocess.Popen([sys.executable, "-m", "llava.eval.model_vqa_loader", *args, "--answers-file",
                                str(killed)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (killed.exists() and killed.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(read_lines(killed)) < 4, "the run finished before it could be killed"
    assert model_vqa_loader.main([*args, "--answers-file", str(killed)]) == 0
    assert without_timing(read_lines(killed)) == without_timing(read_lines(reference))

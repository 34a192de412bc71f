"""Results that never lie: settings checked before any model loads, runs that cannot mix, coverage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.eval import chunking, model_vqa_loader, summarize
from llava.eval.results import INCOMPLETE_EXIT_CODE
from llava.eval.run_record import read_run_record, run_record_path
from llava.eval.scorers import pope
from tests.eval.helpers import make_image, read_lines, write_lines

FAST = ["--model-path", "tiny-random-llava", "--max_new_tokens", "2"]


@pytest.fixture
def benchmark(tmp_path: Path) -> dict[str, Path]:
    images = tmp_path / "images"
    questions = []
    for index in range(3):
        make_image(images / f"{index}.png", (40, 60), (60 * index, 90, 30))
        questions.append({"question_id": index, "image": f"{index}.png", "text": f"is there a thing {index}?",
                          "category": "random", "label": "yes"})
    return {"images": images, "questions": write_lines(tmp_path / "q.jsonl", questions), "root": tmp_path}


def loader(benchmark, answers: Path, *extra: str) -> int:
    return model_vqa_loader.main(["--question-file", str(benchmark["questions"]), "--image-folder",
                                  str(benchmark["images"]), "--answers-file", str(answers), *FAST, *extra])


def usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        model_vqa_loader.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--conv-mode", "nope"], "--conv-mode 'nope' is unknown; valid: "),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--num-chunks", "2", "--chunk-idx", "5"], "--chunk-idx must be in [0, 1] for --num-chunks 2, got 5"),
        (["--model-path", "./no/such/model"], "no such folder (a hub model id is ORG/NAME"),
        (["--image-folder", "/no/such/folder"], "--image-folder /no/such/folder: no such folder"),
        (["--visual_token_num", "0"], "--visual_token_num must be >= 1"),
        (["--use-fast-v", "True", "--pruning_method", "pdrop"], "--use-fast-v True runs FastV, but --pruning_method 'pdrop'"),
        (["--fast-v-attention-rank", "100"], "--fast-v-attention-rank given without a method: add --use-fast-v True"),
    ],
)
def test_bad_settings_are_one_argparse_error_before_any_work(benchmark, tmp_path, capsys, flags, message):
    answers = tmp_path / "a.jsonl"
    argv = ["--question-file", str(benchmark["questions"]), "--image-folder", str(benchmark["images"]),
            "--answers-file", str(answers), *FAST, *flags]
    err = usage_error(capsys, argv)
    assert message in err and len(err.strip().splitlines()) == 1
    assert not answers.exists() and not run_record_path(answers).exists()


def test_missing_image_folder_and_empty_question_file_stop_before_loading(benchmark, tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    code = model_vqa_loader.main(["--question-file", str(benchmark["questions"]), "--answers-file", str(answers), *FAST])
    assert code == 2 and "pass --image-folder" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code = model_vqa_loader.main(["--question-file", str(empty), "--answers-file", str(answers), *FAST])
    assert code == 2 and "holds no questions" in capsys.readouterr().err
    assert not answers.exists()


def test_resume_with_other_settings_stops_naming_both_and_overwrite_starts_again(benchmark, tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    assert loader(benchmark, answers, "--pruning_method", "fastv", "--visual_token_num", "128",
                  "--num-chunks", "3", "--chunk-idx", "0") == 0
    assert len(read_lines(answers)) == 1
    capsys.readouterr()
    assert loader(benchmark, answers, "--pruning_method", "pdrop", "--visual_token_num", "64") == 2
    err = capsys.readouterr().err
    assert "pruning_method: 'fastv' -> 'pdrop'" in err and "visual_token_num: 128 -> 64" in err and "--overwrite" in err
    assert len(read_lines(answers)) == 1  # untouched
    assert loader(benchmark, answers, "--pruning_method", "pdrop", "--visual_token_num", "64", "--overwrite") == 0
    assert {r["metadata"]["pruning_method"] for r in read_lines(answers)} == {"pdrop"}
    assert len(read_lines(answers)) == 3
    assert read_run_record(answers)["visual_token_num"] == 64


def test_a_resume_in_another_dtype_or_device_stops_naming_the_differences(benchmark, tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    assert loader(benchmark, answers, "--num-chunks", "3", "--chunk-idx", "0") == 0
    record = read_run_record(answers)
    assert (record["device"], record["dtype"], record["attn_implementation"]) == ("cpu", "float32", "sdpa")
    capsys.readouterr()
    assert loader(benchmark, answers, "--num-chunks", "3", "--chunk-idx", "0", "--torch-dtype", "bfloat16") == 2
    err = capsys.readouterr().err.strip()
    assert "dtype: 'float32' -> 'bfloat16'" in err and len(err.splitlines()) == 1
    assert loader(benchmark, answers, "--num-chunks", "3", "--chunk-idx", "0", "--attn-implementation", "eager") == 2
    assert "attn_implementation: 'sdpa' -> 'eager'" in capsys.readouterr().err
    assert len(read_lines(answers)) == 1 and read_run_record(answers) == record  # untouched
    old = {key: value for key, value in record.items() if key not in ("device", "dtype", "attn_implementation")}
    run_record_path(answers).write_text(json.dumps(old))  # a record written before these were recorded
    assert loader(benchmark, answers, "--num-chunks", "3", "--chunk-idx", "0") == 2
    assert "dtype: None -> 'float32'" in capsys.readouterr().err


def test_a_cut_partial_line_is_reported(benchmark, tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    assert loader(benchmark, answers, "--num-chunks", "3", "--chunk-idx", "0") == 0
    with answers.open("a") as handle:
        handle.write('{"question_id": 1, "te')
    assert loader(benchmark, answers, "--num-chunks", "3", "--chunk-idx", "0") == 0
    assert "cut a partial last line (22 bytes" in capsys.readouterr().err


def test_an_answers_file_without_run_record_is_not_resumed(benchmark, tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    write_lines(answers, [{"question_id": 0, "prompt": "x", "text": "yes"}])
    assert loader(benchmark, answers) == 2
    assert "settings are unknown" in capsys.readouterr().err


def test_debug_mode_logs_per_sample_choices(benchmark, tmp_path, capsys):
    answers = tmp_path / "a.jsonl"
    assert loader(benchmark, answers, "--enable-dynamic-selection", "--visual_token_num", "128",
                  "--debug-mode", "True", "--num-chunks", "3", "--chunk-idx", "0") == 0
    assert "ablation_a sample 0: R=" in capsys.readouterr().err


def test_chunks_of_different_runs_do_not_merge(tmp_path):
    for index, method in enumerate(["fastv", "pdrop"]):
        path = tmp_path / f"2_{index}.jsonl"
        write_lines(path, [{"question_id": index, "prompt": "p", "text": "yes"}])
        run_record_path(path).write_text(json.dumps({"pruning_method": method, "num_chunks": 2, "chunk_idx": index}))
    code = chunking.main(["--answers-dir", str(tmp_path), "--num-chunks", "2", "--output", str(tmp_path / "m.jsonl")])
    assert code == 1 and not (tmp_path / "m.jsonl").exists()
    run_record_path(tmp_path / "2_1.jsonl").write_text(json.dumps({"pruning_method": "fastv", "num_chunks": 2, "chunk_idx": 1}))
    assert chunking.main(["--answers-dir", str(tmp_path), "--num-chunks", "2", "--output", str(tmp_path / "m.jsonl")]) == 0
    assert read_run_record(tmp_path / "m.jsonl") == {"pruning_method": "fastv"}


def test_a_run_with_no_answers_scores_as_incomplete_never_as_yes(benchmark, tmp_path, capsys):
    answers = tmp_path / "merge.jsonl"
    answers.write_text("")
    run_record_path(answers).write_text(json.dumps({"pruning_method": "fastv", "visual_token_num": 64}))
    result_json = tmp_path / "results" / "fastv_t64" / "pope.json"
    code = pope.main(["--question-file", str(benchmark["questions"]), "--result-file", str(answers),
                      "--result-json", str(result_json)])
    assert code == INCOMPLETE_EXIT_CODE and "3 of 3 question(s) have no answer" in capsys.readouterr().err
    result = json.loads(result_json.read_text())
    assert result["complete"] is False and result["coverage"]["answered"] == 0
    assert result["score"] == 0.0 and result["metrics"]["splits"]["random"]["yes_ratio"] == 0.0
    assert result["config"]["pruning_method"] == "fastv"  # from the run record, not from an answer

    vanilla = {"benchmark": "pope", "score": 10.0, "config": {"pruning_method": None}, "answers_file": "v.jsonl",
               "coverage": {"asked": 3, "answered": 3, "fraction": 1.0}, "complete": True, "cost": {}}
    (tmp_path / "results" / "vanilla").mkdir()
    (tmp_path / "results" / "vanilla" / "pope.json").write_text(json.dumps(vanilla))
    code = summarize.main(["--results-dir", str(tmp_path / "results"), "--output-dir", str(tmp_path / "s"), "--no-plots"])
    assert code == INCOMPLETE_EXIT_CODE
    table = (tmp_path / "s" / "results.md").read_text()
    assert "| vanilla |" in table and "| 10 |" in table and "| fastv | 64 |" in table and "pope" in table


def test_unrecorded_configuration_is_its_own_row_and_duplicates_are_an_error(tmp_path, capsys):
    def record(folder: str, config, score: float) -> None:
        path = tmp_path / folder / "pope.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"benchmark": "pope", "score": score, "config": config, "cost": {},
                                    "answers_file": f"{folder}.jsonl"}))

    record("a_vanilla", {"pruning_method": None}, 10.0)
    record("z_broken", None, 66.67)
    assert summarize.main(["--results-dir", str(tmp_path), "--output-dir", str(tmp_path / "s"), "--no-plots"]) == 0
    table = (tmp_path / "s" / "results.md").read_text()
    assert "| vanilla |" in table and "| 10 |" in table and "unrecorded (z_broken.jsonl)" in table
    record("zz_vanilla_again", {"pruning_method": None}, 12.0)
    assert summarize.main(["--results-dir", str(tmp_path), "--output-dir", str(tmp_path / "s"), "--no-plots"]) == 1
    assert "two pope results for one configuration" in capsys.readouterr().err


def test_fastv_original_flags_are_the_registry_configuration(benchmark, tmp_path):
    """FastV's scripts' flags (``--use-fast-v True --fast-v-attention-rank R ...``) answer exactly as
    ``--pruning_method fastv --method-param keep=R``; the span flags pin the span the engine finds."""
    original, registry = tmp_path / "original.jsonl", tmp_path / "registry.jsonl"
    assert loader(benchmark, original, "--use-fast-v", "True", "--fast-v-inplace", "False", "--fast-v-agg-layer", "2",
                  "--fast-v-attention-rank", "3", "--fast-v-token-selection-method", "max_head") == 0
    assert loader(benchmark, registry, "--pruning_method", "fastv", "--method-param", "keep=3",
                  "--method-param", "token_selection_method=max_head") == 0
    assert [a["text"] for a in read_lines(original)] == [a["text"] for a in read_lines(registry)]
    record = read_run_record(original)
    assert record["pruning_method"] == "fastv" and record["method_params"]["fast_v_attention_rank"] == 3


def test_help_lists_methods_strategies_and_parameters(capsys):
    with pytest.raises(SystemExit):
        model_vqa_loader.main(["--help"])
    text = capsys.readouterr().out
    from llava.pruning.head_selection import HEAD_STRATEGIES
    from llava.pruning.registry import available_methods

    assert all(f"  {name}: " in text for name in available_methods())
    assert all(strategy in text for strategy in HEAD_STRATEGIES)
    assert "token_selection_method='avg_all_heads'" in text and "--fast-v-attention-rank" in text


def test_a_retrained_model_at_the_same_path_is_another_run(tmp_path):
    from llava.eval.run_record import model_fingerprint

    folder = tmp_path / "model"
    folder.mkdir()
    weights = bytearray(range(256)) * 20_000  # 5 MB: the middle is not sampled, both ends are
    (folder / "model.safetensors").write_bytes(bytes(weights))
    (folder / "config.json").write_text("{}")
    first = model_fingerprint(folder)
    (folder / "config.json").write_text('{"a": 1}')  # not a weight file
    assert model_fingerprint(folder) == first
    weights[-10] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(weights))
    retrained = model_fingerprint(folder)
    assert retrained != first
    (folder / "learned_pruner_t64.pt").write_bytes(b"pruner")  # a pruner shipped beside the model counts too
    assert model_fingerprint(folder) not in (first, retrained)
    assert model_fingerprint("llava-hf/llava-1.5-7b-hf") is None  # a hub id has no local weights

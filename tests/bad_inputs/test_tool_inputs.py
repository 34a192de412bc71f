"""Bad inputs to the tools (demo, pruner trainer, method parameters, pruner checkpoints, kvcompress scripts, viz):
each gets a one-line error before heavy work (``error``), is handled with nothing lost (``handled``) or turns
out valid with the right result (``correct``); no earlier result file changes.

Everything runs in-process (``main(argv)``, ``SystemExit`` caught) on the tiny random models or the shipped
shapes VLM's config; the slow fault test kills a demo while it writes its benchmarks.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from llava import demo, viz
from llava.model.builder import load_pretrained_model
from llava.pruning.learned.checkpoint import (
    CHECKPOINT_NAME,
    model_record,
    pruner_config_dict,
    pruner_fit_problem,
    pruner_from_checkpoint,
    read_checkpoint,
)
from llava.pruning.learned.heads import LayerSpecificPruner, PrunerConfig
from llava.pruning.registry import available_methods, build_method, method_class
from llava.shapes.benchmarks import COMPLETE_MARKER, ensure_benchmarks, write_benchmarks
from llava.train import train_pruner
from toolkit_common.training import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SHAPES_MODEL = ROOT / "playground" / "models" / "shapes-llava"
MAX_ERROR_CHARS = 700


# --- helpers ------------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (what must not change after a refused input)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, call: Callable[[], object], code: int = 2) -> str:
    """Run ``call``, which must stop with exit ``code`` and one short line on stderr, no traceback; the line."""
    with pytest.raises(SystemExit) as stopped:
        call()
    err = capsys.readouterr().err
    assert stopped.value.code == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < MAX_ERROR_CHARS, err
    return lines[0]


def script(name: str) -> ModuleType:
    """A ``scripts/<name>.py`` module, imported by path (its ``main(argv)`` runs in-process)."""
    spec = importlib.util.spec_from_file_location(f"tool_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- method parameters: every registered method, every parameter, typed at load --------------------------------

BAD_VALUES: dict[str, object] = {"int": 10.5, "float": "abc", "bool": "True", "str": 7, "list": [2, "x"]}


def bad_value(annotation: object) -> object:
    """A value of the wrong type for ``annotation``: a fractional float for an int, text for a number, ..."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    first = options[0]
    if typing.get_origin(first) in (tuple, list):
        return BAD_VALUES["list"]
    return BAD_VALUES[first.__name__]


def method_fields() -> list[tuple[str, str, object]]:
    """``(method, parameter, annotation)`` of every init field of every registered method."""
    cases = []
    for name in available_methods():
        cls = method_class(name)
        hints = typing.get_type_hints(cls)
        cases += [(name, f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.init]
    return cases


@pytest.mark.outcome("error")
@pytest.mark.parametrize(("method", "parameter", "annotation"), method_fields(), ids=lambda v: str(v)[:20])
def test_every_method_parameter_of_the_wrong_type_is_refused_at_load(method, parameter, annotation):
    value = bad_value(annotation)
    with pytest.raises(ValueError) as refused:
        build_method(method, {parameter: value})
    message = str(refused.value)
    assert f"parameter {parameter}={value!r} must be" in message and method in message
    assert len(message.splitlines()) == 1


@pytest.mark.outcome("error")
@pytest.mark.parametrize(("params", "expected"), [
    ({"keep": 10.5}, "parameter keep=10.5 must be an int or None, got float"),
    ({"keep": True}, "parameter keep=True must be an int or None, got bool"),
    ({"seed": "abc"}, "parameter seed='abc' must be an int, got str"),
])
def test_the_issue_s_method_parameters_name_the_value_and_the_type(params, expected):
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        build_method("random", params)


@pytest.mark.outcome("correct")
def test_whole_floats_for_ints_ints_for_floats_and_none_for_optional_are_accepted():
    assert build_method("random", {"keep": 10.0, "seed": 3.0}).params()["keep"] == 10
    assert isinstance(build_method("random", {"keep": 10.0}).keep, int)
    assert build_method("fastv", {"weighted_alpha": 1}).weighted_alpha == 1
    assert build_method("pdrop", {"layer_list": [2, 8], "ratio_list": [0.5, 0.25], "decay": None}).params()["layer_list"] == [2, 8]


@pytest.mark.outcome("error")
def test_a_fractional_keep_stops_the_loader_before_any_answer(tmp_path, capsys):
    from llava.eval import model_vqa_loader
    from tests.eval.helpers import make_image, write_lines

    make_image(tmp_path / "0.png", (40, 40), (10, 90, 30))
    questions = write_lines(tmp_path / "q.jsonl", [{"question_id": 0, "image": "0.png", "text": "a?"}])
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(["--model-path", "tiny-random-llava", "--question-file", str(questions), "--image-folder",
                           str(tmp_path), "--answers-file", str(answers), "--max_new_tokens", "2",
                           "--pruning_method", "fastv", "--method-param", "keep=10.5"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "parameter keep=10.5 must be an int" in err
    assert not answers.exists() or answers.read_text() == ""
    assert not (tmp_path / "a.run.json").exists()  # no record of a run that never started


# --- demo -------------------------------------------------------------------------------------------------------


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "earlier_result.json").write_text('{"score": 1}')
    return folder


def demo_error(capsys, eval_dir: Path, *flags: str, model: Path = SHAPES_MODEL) -> str:
    before = snapshot(eval_dir)
    line = one_line_error(capsys, lambda: demo.main(["--model-path", str(model), "--eval-dir", str(eval_dir), *flags]))
    assert snapshot(eval_dir) == before  # nothing written, no benchmark, no run
    return line


@pytest.mark.outcome("error")
@pytest.mark.parametrize(("flags", "expected"), [
    (["--tokens", "1000"], "--tokens 1000: a budget must lie in [1, 576]"),
    (["--tokens", "0"], "--tokens 0: a budget must lie in [1, 576]"),
    (["--tokens", "-64", "64"], "--tokens -64: a budget must lie in [1, 576]"),
    (["--tokens", "64", "64"], "give each budget once"),
    (["--tokens", "1"], "unreachable"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--per-benchmark", "0"], "--questions must be >= 1, got 0"),  # the old name of --questions
    (["--overlays", "-1"], "--overlays must be >= 0, got -1"),
    (["--methods", "nope"], "unknown method(s) nope; registered:"),
    (["--methods", "learned_merger"], "needs a trained merger per run"),
])
def test_demo_settings_that_cannot_work_stop_before_any_run(capsys, eval_dir, flags, expected):
    assert expected in demo_error(capsys, eval_dir, *flags)


@pytest.mark.outcome("error")
def test_demo_eval_dir_that_is_a_file_is_refused(capsys, tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    line = one_line_error(capsys, lambda: demo.main(["--model-path", str(SHAPES_MODEL), "--eval-dir", str(a_file)]))
    assert "a file, not a folder" in line and a_file.read_text() == "keep me"


@pytest.mark.outcome("error")
@pytest.mark.parametrize(("config_text", "expected"), [
    (None, "config.json missing"),
    ("{not json", "unreadable config.json"),
    (json.dumps({"model_type": "llama", "hidden_size": 64}), "not a LLaVA model"),
])
def test_demo_model_folder_without_a_usable_llava_config_is_refused(capsys, eval_dir, tmp_path, config_text, expected):
    model = tmp_path / "model"
    model.mkdir()
    if config_text is not None:
        (model / "config.json").write_text(config_text)
    assert expected in demo_error(capsys, eval_dir, model=model)


@pytest.mark.outcome("error")
def test_demo_refuses_a_learned_pruner_trained_for_another_model(capsys, eval_dir, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(SHAPES_MODEL / "config.json", model / "config.json")
    checkpoint = read_checkpoint(SHAPES_MODEL / "learned_pruner_t64.pt")
    save_checkpoint(model / "learned_pruner_t64.pt", {**checkpoint, "model": model_record(64, 8, 576)})
    line = demo_error(capsys, eval_dir, "--methods", "learned", "--tokens", "64", model=model)
    assert "learned_t64: learned: the learned pruner was trained for another model: num_layers 8 (this model: 32)" in line


def small_benchmark_files(root: Path) -> dict[str, bytes]:
    return {name: data for name, data in snapshot(root).items() if not name.endswith(".partial")}


@pytest.mark.outcome("handled")
def test_a_benchmark_left_partial_by_a_kill_is_written_again_and_complete_ones_are_kept(tmp_path, capsys):
    reference = tmp_path / "reference"
    write_benchmarks(reference, 2)
    root = tmp_path / "killed"
    write_benchmarks(root, 2)
    (root / "pope" / COMPLETE_MARKER).unlink()  # killed after some files, before the marker
    (root / "pope" / "llava_pope_test.jsonl").write_text('{"question_id": "torn')
    (root / "pope" / ".llava_pope_test.jsonl.partial").write_text("{")  # a temporary file the kill left
    kept = (root / "gqa" / "llava_gqa_testdev_balanced.jsonl").stat().st_mtime_ns
    assert ensure_benchmarks(root, 2) == ["pope"]
    assert small_benchmark_files(root) == small_benchmark_files(reference)
    assert (root / "gqa" / "llava_gqa_testdev_balanced.jsonl").stat().st_mtime_ns == kept
    assert ensure_benchmarks(root, 2) == []  # complete: nothing written again


@pytest.mark.outcome("handled")
def test_complete_benchmarks_of_another_size_are_kept_with_a_note(tmp_path, capsys):
    write_benchmarks(tmp_path, 2)
    before = snapshot(tmp_path)
    assert ensure_benchmarks(tmp_path, 5) == []
    assert snapshot(tmp_path) == before and "kept as it is" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.outcome("handled")
def test_fault_kill_while_the_demo_writes_benchmarks_then_the_demo_resumes(random_shapes_vlm, tmp_path, capsys):
    """SIGKILL a demo while it writes its benchmarks; the next run writes what is partial again and completes."""
    eval_dir = tmp_path / "eval"
    argv = ["--model-path", str(random_shapes_vlm), "--eval-dir", str(eval_dir), "--tokens", "192", "--methods",
            "fastv", "--overlays", "1", "--batch-size", "8", "--per-benchmark", "40"]
    process = subprocess.Popen([sys.executable, "-m", "llava.demo", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((eval_dir / "gqa").rglob("*.jpg"))) < 8:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    names = ("gqa", "pope", "scienceqa")
    assert not all((eval_dir / name / COMPLETE_MARKER).exists() for name in names)  # killed while writing
    assert demo.main(argv) == 0
    assert all((eval_dir / name / COMPLETE_MARKER).is_file() for name in names)
    questions = (eval_dir / "gqa" / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines()
    assert len(questions) == 40 and (eval_dir / "summary" / "index.html").is_file()


# --- learned pruner checkpoints ---------------------------------------------------------------------------------


def pruner_checkpoint(path: Path, d_model: int = 64, layers: tuple[int, ...] = (2, 4, 6), **extra) -> Path:
    pruner = LayerSpecificPruner(PrunerConfig(d_model=d_model, pruning_layers=list(layers), hidden_dim=8))
    save_checkpoint(path, {"pruner_config": pruner_config_dict(pruner), "pruner": pruner.state_dict(), **extra})
    return path


@pytest.mark.outcome("error")
def test_a_truncated_pruner_checkpoint_is_one_line_not_a_zip_reader_traceback(tmp_path):
    path = pruner_checkpoint(tmp_path / "p.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError) as refused:
        read_checkpoint(path)
    message = str(refused.value)
    assert "is unreadable, truncated or not a torch checkpoint" in message and len(message.splitlines()) == 1


@pytest.mark.outcome("error")
def test_a_truncated_pruner_checkpoint_stops_the_loader_before_any_answer(tmp_path, capsys):
    from llava.eval import model_vqa_loader
    from tests.eval.helpers import make_image, write_lines

    path = pruner_checkpoint(tmp_path / "p.pt", d_model=64, layers=(1, 2))
    path.write_bytes(path.read_bytes()[:300])
    make_image(tmp_path / "0.png", (40, 40), (10, 90, 30))
    questions = write_lines(tmp_path / "q.jsonl", [{"question_id": 0, "image": "0.png", "text": "a?"}])
    answers = tmp_path / "a.jsonl"
    model_vqa_loader.main(["--model-path", "tiny-random-llava", "--question-file", str(questions), "--image-folder",
                           str(tmp_path), "--answers-file", str(answers), "--max_new_tokens", "2",
                           "--pruning_method", "learned", "--method-param", f"pruner_checkpoint={path}"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "truncated or not a torch checkpoint" in err
    assert not answers.exists() or answers.read_text() == ""
    assert not (tmp_path / "a.run.json").exists()  # no record of a run that never started


@pytest.mark.outcome("error")
def test_a_merger_checkpoint_given_as_a_pruner_is_refused(tmp_path):
    path = tmp_path / "merger.pt"
    save_checkpoint(path, {"merger_config": {"d_model": 64}, "merger": {}})
    with pytest.raises(ValueError, match="holds no learned pruner"):
        pruner_from_checkpoint(read_checkpoint(path))


@pytest.mark.outcome("error")
@pytest.mark.parametrize(("record", "expected"), [
    (model_record(32, 32, 576), "d_model 32 (this model: 64)"),
    (model_record(64, 8, 576), "num_layers 8 (this model: 32)"),
    (model_record(64, 32, 144), "visual_tokens 144 (this model: 576)"),
])
def test_a_pruner_trained_for_another_model_is_named(tmp_path, record, expected):
    checkpoint = read_checkpoint(pruner_checkpoint(tmp_path / "p.pt", model=record))
    assert expected in pruner_fit_problem(checkpoint, 64, 32, 576)


@pytest.mark.outcome("error")
def test_the_loader_refuses_a_pruner_trained_for_another_model_before_any_run(tmp_path):
    """The tiny LLaVA's LM is 64 wide with 32 layers and 576 visual tokens: a pruner for 8 layers is refused."""
    path = pruner_checkpoint(tmp_path / "p.pt", model=model_record(64, 8, 576))
    with pytest.raises(ValueError, match=r"learned: the learned pruner was trained for another model: num_layers 8"):
        load_pretrained_model("tiny-random-llava", pruning_method="learned", pruner_checkpoint=str(path))


@pytest.mark.outcome("correct")
def test_a_pruner_for_this_model_and_an_older_checkpoint_without_a_record_fit(tmp_path):
    assert pruner_fit_problem(read_checkpoint(pruner_checkpoint(tmp_path / "a.pt", model=model_record(64, 32, 576))), 64, 32, 576) is None
    assert pruner_fit_problem(read_checkpoint(pruner_checkpoint(tmp_path / "b.pt")), 64, 32, 576) is None
    assert "pruning layers [2, 4, 6]" in pruner_fit_problem(read_checkpoint(tmp_path / "b.pt"), 64, 4, 576)


# --- train_pruner ---------------------------------------------------------------------------------------------


def tiny_config(output_dir: Path, steps: int = 1, **sections) -> dict:
    config = {
        "model_path": "tiny-random-llava",
        "output_dir": str(output_dir),
        "model_overrides": {"num_hidden_layers": 4},
        "method_settings": {"pruning_layers": [1, 2, 3], "target_keep_ratio": [0.3, 0.15, 0.05], "head_hidden_dim": 32},
        "training": {"steps": steps, "batch_size": 1, "checkpoint_every": 1, "dataset_size": 1},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config


def write_config(path: Path, config: dict | str) -> Path:
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def trainer_error(capsys, tmp_path: Path, config: dict | str, *flags: str) -> str:
    path = write_config(tmp_path / "config.yaml", config)
    before = snapshot(tmp_path)
    capsys.readouterr()  # output of earlier steps (a first run)
    line = one_line_error(capsys, lambda: train_pruner.main(["--config", str(path), *flags]))
    assert snapshot(tmp_path) == before
    return line


@pytest.mark.outcome("error")
@pytest.mark.parametrize(("config", "flags", "expected"), [
    ("model_path: [unclosed\n", [], "invalid YAML at line"),
    ("- a\n- list\n", [], "must hold a mapping of sections"),
    (None, ["--set", "training.steps=[1"], "invalid YAML"),
    (None, ["--set", "training.stepz=3"], "unknown key(s) ['stepz'] in config.training"),
    (None, ["--set", "training.steps=ten"], "config.training.steps='ten' must be an int"),
    (None, ["--set", "training.lr_pruner=true"], "config.training.lr_pruner=True must be a float"),
    (None, ["--set", "method_settings.pruning_layers=[1, 2, 5]"], "must lie in [1, 3] for a model with 4 layers"),
    (None, ["--set", "method_settings.pruning_layers=[2, 1, 3]"], "strictly increasing"),
    (None, ["--set", "method_settings.head_num_heads=5"], "must be divisible by num_heads 5"),
    (None, ["--set", "method_settings.target_tokens=[9999, 10, 1]"], "exceed the span"),
    (None, ["--set", "model_path=./no/such/model", "--set", "model_overrides={}"], "no/such/model': no such folder"),
    (None, ["--resume", "--overwrite"], "not both"),
])
def test_trainer_inputs_that_cannot_work_are_one_line(capsys, tmp_path, config, flags, expected):
    assert expected in trainer_error(capsys, tmp_path, config or tiny_config(tmp_path / "run"), *flags)


@pytest.mark.outcome("handled")
def test_resume_before_the_first_checkpoint_starts_fresh_and_says_so(capsys, tmp_path):
    path = write_config(tmp_path / "config.yaml", tiny_config(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_log.jsonl").write_text('{"step": 0, "total": 1.0}\n{"step": 1, "to')  # killed
    train_pruner.main(["--config", str(path), "--resume"])
    assert "nothing was checkpointed yet" in capsys.readouterr().err
    assert read_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 1
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()] == [0]


@pytest.fixture
def one_step_run(tmp_path: Path) -> Path:
    path = write_config(tmp_path / "config.yaml", tiny_config(tmp_path / "run", steps=1))
    train_pruner.main(["--config", str(path)])
    return path


@pytest.mark.outcome("error")
def test_resume_with_other_settings_names_them_and_changes_nothing(capsys, tmp_path, one_step_run):
    line = trainer_error(capsys, tmp_path, tiny_config(tmp_path / "run", steps=2), "--resume", "--set", "training.lr_pruner=0.5")
    assert "training.lr_pruner 0.5 (checkpoint: 0.001)" in line and "--overwrite" in line


@pytest.mark.outcome("handled")
def test_resume_drops_a_torn_last_log_line_with_a_warning(capsys, tmp_path, one_step_run):
    write_config(one_step_run, tiny_config(tmp_path / "run", steps=2))
    log = tmp_path / "run" / "train_log.jsonl"
    log.write_text(log.read_text() + '{"step": 1, "tot')
    capsys.readouterr()
    train_pruner.main(["--config", str(one_step_run), "--resume"])
    assert "dropped a torn last line" in capsys.readouterr().err
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1]


@pytest.mark.outcome("correct")
def test_resume_with_more_steps_continues_the_run(capsys, tmp_path, one_step_run):
    train_pruner.main(["--config", str(one_step_run), "--resume", "--steps", "2"])
    assert read_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 2


# --- kvcompress scripts -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kv_scripts() -> dict[str, ModuleType]:
    return {name: script(name) for name in ("benchmark", "kv_tradeoff", "analyze_attention")}


CLASSIFICATION = ROOT / "docs" / "kvcompress_results" / "head_classification_gates_w128.json"


@pytest.mark.outcome("error")
@pytest.mark.parametrize(("name", "argv", "expected"), [
    ("benchmark", ["--window", "-5"], "--window -5: must lie in [1, inf)"),
    ("benchmark", ["--sinks", "-1"], "--sinks -1: must lie in [0, inf)"),
    ("benchmark", ["--kv-fraction", "1.5"], "--kv-fraction 1.5: must lie in (0, 1]"),
    ("benchmark", ["--kv-fraction", "0"], "--kv-fraction 0: must lie in (0, 1]"),
    ("benchmark", ["--prompt-lens", "600", "0"], "--prompt-lens 0: must lie in [1, inf)"),
    ("benchmark", ["--repeats", "0"], "--repeats 0: must lie in [1, inf)"),
    ("benchmark", ["--ppl-stride", "600"], "--ppl-stride 600 must lie in [1, --ppl-max-length - 1]"),
    ("benchmark", ["--methods", "nope"], "unknown method 'nope'"),
    ("benchmark", ["--methods", "dead@gates"], "no --classification named 'gates'"),
    ("kv_tradeoff", [str(CLASSIFICATION), "--window", "-5"], "--window -5: must lie in [1, inf)"),
    ("kv_tradeoff", [str(CLASSIFICATION), "--groups", "15", "-1"], "--groups -1: must lie in [0, inf)"),
    ("kv_tradeoff", [str(CLASSIFICATION), "--ppl-windows", "0"], "--ppl-windows 0: must lie in [1, inf)"),
    ("analyze_attention", ["--seq-len", "0"], "--seq-len 0: must lie in [1, inf)"),
    ("analyze_attention", ["--lengths", "128", "0"], "--lengths 0: must lie in [1, inf)"),
    ("analyze_attention", ["--window-budget", "1.5"], "--window-budget 1.5: must lie in [0, 1]"),
    ("analyze_attention", ["--gate-threshold", "0"], "--gate-threshold 0: must lie in (0, 1]"),
    ("analyze_attention", ["--text", "/no/such/text.txt"], "--text /no/such/text.txt: no such file"),
])
def test_kvcompress_numeric_flags_out_of_range_are_one_line(capsys, kv_scripts, tmp_path, monkeypatch, name, argv, expected):
    monkeypatch.chdir(tmp_path)  # a script that went on would write results/ here
    assert expected in one_line_error(capsys, lambda: kv_scripts[name].main(argv))
    assert not (tmp_path / "results").exists()


@pytest.mark.outcome("error")
def test_a_corrupt_classification_file_is_one_line(capsys, kv_scripts, tmp_path):
    broken = tmp_path / "classification.json"
    broken.write_text('{"shape": {"num_layers": 2}')
    line = one_line_error(capsys, lambda: kv_scripts["kv_tradeoff"].main([str(broken)]))
    assert "not a head classification" in line


# --- viz --------------------------------------------------------------------------------------------------------


def kept_record(tmp_path: Path, **changes) -> Path:
    from PIL import Image

    Image.new("RGB", (336, 336), (200, 100, 50)).save(tmp_path / "image.png")
    record = {"image": str(tmp_path / "image.png"), "question": "q", "cells": [[0, 0]], "method": "fastv",
              "num_layers": 4, "span": 576, "stages": [{"layer": 2, "kept": [0, 1, 2]}], "span_per_layer": [576, 576, 3, 3]}
    record.update(changes)
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    return path


def viz_error(capsys, tmp_path: Path, *argv: str) -> str:
    before = snapshot(tmp_path)
    line = one_line_error(capsys, lambda: viz.main(list(argv)))
    assert snapshot(tmp_path) == before
    return line


@pytest.mark.outcome("error")
@pytest.mark.parametrize(("picture", "record_text", "expected"), [
    ("overlay", "{not json", "not a JSON record"),
    ("overlay", "[1, 2]", "expected a JSON object"),
    ("overlay", json.dumps({"image": "x.png"}), "missing field(s) cells, stages, span"),
    ("layers", json.dumps({"method": "fastv"}), "missing field(s) num_layers, span_per_layer"),
])
def test_viz_records_that_are_not_records_are_one_line(capsys, tmp_path, picture, record_text, expected):
    record = tmp_path / "bad.json"
    record.write_text(record_text)
    assert expected in viz_error(capsys, tmp_path, picture, "--record", str(record), "--output", str(tmp_path / "o.png"))


@pytest.mark.outcome("error")
def test_viz_kept_patches_outside_the_grid_are_one_line(capsys, tmp_path):
    record = kept_record(tmp_path, stages=[{"layer": 2, "kept": [0, 9999]}])
    assert "kept patches must be indices in [0, 575]" in viz_error(
        capsys, tmp_path, "overlay", "--record", str(record), "--output", str(tmp_path / "o.png"))


@pytest.mark.outcome("error")
def test_viz_missing_image_is_one_line(capsys, tmp_path):
    record = kept_record(tmp_path, image=str(tmp_path / "gone.png"))
    line = viz_error(capsys, tmp_path, "overlay", "--record", str(record), "--output", str(tmp_path / "o.png"))
    assert "cannot draw the overlay: FileNotFoundError" in line


@pytest.mark.outcome("error")
@pytest.mark.parametrize(("output", "expected"), [("no/such/folder/o.png", "no folder"), ("o.unknownext", "cannot draw the overlay")])
def test_viz_unwritable_output_is_one_line(capsys, tmp_path, output, expected):
    record = kept_record(tmp_path)
    assert expected in viz_error(capsys, tmp_path, "overlay", "--record", str(record), "--output", str(tmp_path / output))


@pytest.mark.outcome("error")
def test_viz_overlay_of_two_records_and_a_missing_record_are_one_line(capsys, tmp_path):
    record = kept_record(tmp_path)
    assert "single --record" in viz_error(capsys, tmp_path, "overlay", "--record", str(record), str(record), "--output", "o.png")
    assert "not found" in viz_error(capsys, tmp_path, "layers", "--record", str(tmp_path / "none.json"), "--output", "o.png")


@pytest.mark.outcome("correct")
def test_viz_draws_a_valid_record(capsys, tmp_path):
    record = kept_record(tmp_path)
    assert viz.main(["overlay", "--record", str(record), "--output", str(tmp_path / "o.png")]) == 0
    assert viz.main(["layers", "--record", str(record), "--output", str(tmp_path / "l.png")]) == 0
    assert (tmp_path / "o.png").stat().st_size > 0 and (tmp_path / "l.png").stat().st_size > 0


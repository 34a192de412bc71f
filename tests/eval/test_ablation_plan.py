"""The ablation drivers' plan (``llava.eval.ablation_plan``): checkpoints the model does not ship, head counts
above the model's, and configurations the loader would refuse, all settled before any run."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava.eval import ablation_plan

SHAPES = str(Path(__file__).resolve().parents[2] / "playground" / "models" / "shapes-llava")


def plan(capsys: pytest.CaptureFixture, *argv: str) -> tuple[list[str], str]:
    """The printed runs and the notes of one plan."""
    assert ablation_plan.main(list(argv)) == 0
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err


def test_methods_leave_out_unshipped_checkpoints_and_clamp_default_heads(capsys: pytest.CaptureFixture) -> None:
    runs, notes = plan(capsys, "methods", "--model-path", SHAPES, "--tokens", "64", "96",
                       "--methods", "fastv", "fastv_fine_head", "learned", "learned_merger")
    assert runs == ["fastv 64", "fastv 96", "fastv_fine_head 64 2", "fastv_fine_head 96 2", "learned 64"]
    assert "learned_merger: left out (needs merger_checkpoint=<path>" in notes
    assert "learned at 96 tokens: left out" in notes and "learned_pruner_t96.pt does not exist" in notes
    assert "its default heads=16 exceeds the model's 2 attention heads per layer; running heads=2" in notes


def test_methods_default_is_every_registered_method_but_excluded(capsys: pytest.CaptureFixture) -> None:
    from llava.pruning.registry import available_methods

    runs, _ = plan(capsys, "methods", "--model-path", "tiny-random-llava", "--tokens", "64", "--exclude", "random")
    methods = {run.split()[0] for run in runs}
    assert methods == set(available_methods()) - {"random", "learned", "learned_merger"}  # no folder: no checkpoints


def test_head_counts_default_to_fractions_of_the_model_and_clamp_requests(capsys: pytest.CaptureFixture) -> None:
    assert ablation_plan.head_counts(None, 32) == ([8, 16, 24, 32], [])
    assert ablation_plan.head_counts(None, 2) == ([1, 2], [])
    counts, warnings = ablation_plan.head_counts([1, 8, 16, 2], 2)
    assert counts == [1, 2] and warnings == ["warning: heads 8 16 exceed the model's 2 attention heads per layer: clamped to 2"]
    runs, notes = plan(capsys, "heads", "--model-path", SHAPES, "--tokens", "64", "--heads", "8", "--strategies", "sum")
    assert runs == ["fastv_fine_head 64 2 sum", "dynamic 64"] and "clamped to 2" in notes


def test_a_configuration_the_loader_refuses_stops_the_plan(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        ablation_plan.main(["methods", "--model-path", SHAPES, "--tokens", "100000", "--methods", "fastv"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "1 configuration(s) cannot run" in error and "fastv 100000:" in error


@pytest.mark.parametrize("argv", [["methods", "--methods", "fastv", "nope"], ["heads", "--strategies", "nope"]])
def test_unknown_methods_and_strategies_are_one_line(capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        ablation_plan.main([*argv, "--model-path", SHAPES, "--tokens", "64"])
    assert stopped.value.code == 2 and "unknown: nope; valid: " in capsys.readouterr().err


def test_an_unreadable_config_is_not_checked_but_said(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    runs, notes = plan(capsys, "heads", "--model-path", str(tmp_path), "--tokens", "64", "--strategies", "sum")
    assert runs[0] == "fastv_fine_head 64 8 sum" and "configurations are not checked" in notes

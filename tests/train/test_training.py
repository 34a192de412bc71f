"""Training the pruner on the tiny random LLaVA: loss goes down, keep ratio moves to the target, exact resume, CLI."""

import json

import pytest
import torch

from llava.pruning.learned.checkpoint import CHECKPOINT_NAME, read_checkpoint
from llava.train.pruner.config import train_config_from_dict
from llava.train.train_pruner import LOG_NAME, main, run_training

TARGETS = [0.3, 0.15, 0.05]


def small_config(output_dir, steps: int) -> dict:
    """4-layer tiny LLaVA, one repeated sample, ramps far longer than the run (near-constant weights)."""
    return {
        "model_path": "tiny-random-llava",
        "output_dir": str(output_dir),
        "model_overrides": {"num_hidden_layers": 4},
        "method_settings": {"pruning_layers": [1, 2, 3], "target_keep_ratio": TARGETS, "head_hidden_dim": 32},
        "training": {
            "steps": steps,
            "batch_size": 1,
            "lr_pruner": 0.003,
            "checkpoint_every": 1,
            "schedule_steps": 1000,
            "dataset_size": 1,
        },
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("straight")
    return output_dir, run_training(train_config_from_dict(small_config(output_dir, 4)), show_progress=False)


def gap_to_target(metrics: dict) -> float:
    return sum(abs(keep - target) for keep, target in zip(metrics["keep_ratio"].values(), TARGETS, strict=True))


def test_a_few_steps_reduce_the_loss_and_move_the_keep_ratio_to_the_target(uninterrupted):
    output_dir, history = uninterrupted
    assert [m["step"] for m in history] == [0, 1, 2, 3]
    assert history[-1]["total"] < history[0]["total"]
    assert gap_to_target(history[-1]) < gap_to_target(history[0])
    assert all(set(m["residual_weight"]) == set(m["hard_keep_ratio"]) == {1, 2, 3} for m in history)
    assert history[-1]["residual_weight"] != history[0]["residual_weight"]  # learnable weight moves
    logged = [json.loads(line) for line in (output_dir / LOG_NAME).read_text().splitlines()]
    assert [m["total"] for m in logged] == [m["total"] for m in history]
    assert {"loss_task", "loss_adversarial", "loss_sparsity", "loss_binarization", "loss_discriminator"} <= set(
        logged[0]
    )


def test_checkpoint_then_resume_continues_identically(uninterrupted, tmp_path):
    straight_dir, straight = uninterrupted
    first = run_training(train_config_from_dict(small_config(tmp_path, 2)), show_progress=False)
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 2
    second = run_training(train_config_from_dict(small_config(tmp_path, 4)), resume=True, show_progress=False)
    assert [m["step"] for m in second] == [2, 3]
    assert first + second == straight
    resumed, reference = read_checkpoint(tmp_path / CHECKPOINT_NAME), read_checkpoint(straight_dir / CHECKPOINT_NAME)
    for part in ("pruner", "discriminator"):
        for name, tensor in reference[part].items():
            assert torch.equal(resumed[part][name], tensor), f"{part}.{name}"


def cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_cli_trains_from_yaml_refuses_a_used_folder_and_checks_flags_first(tmp_path, capsys):
    import yaml

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(small_config(tmp_path / "run", 1)))
    assert "--resume: no checkpoint.pt" in cli_error(["--config", str(config_path), "--resume"], capsys)
    assert "--steps must be >= 1" in cli_error(["--config", str(config_path), "--steps", "0"], capsys)
    assert "--config" in cli_error(["--config", str(tmp_path / "missing.yaml")], capsys)
    main(["--config", str(config_path)])
    assert read_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 1
    log = (tmp_path / "run" / "train_log.jsonl").read_text()
    assert "already holds a training run" in cli_error(["--config", str(config_path)], capsys)
    assert (tmp_path / "run" / "train_log.jsonl").read_text() == log  # nothing overwritten or appended
    main(["--config", str(config_path), "--overwrite"])
    assert len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) == 1


def test_resume_drops_log_lines_past_the_checkpoint(tmp_path):
    config = train_config_from_dict(small_config(tmp_path, 2))
    run_training(config, show_progress=False)
    log = tmp_path / "train_log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines + [lines[-1].replace('"step": 1', '"step": 2')]) + "\n")  # a step with no checkpoint
    run_training(train_config_from_dict(small_config(tmp_path, 3)), resume=True, show_progress=False)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [0, 1, 2]  # the step logged past the checkpoint was run again, logged once

"""Training the pruner on the tiny random LLaVA: loss goes down, keep ratio moves to the target, exact resume, CLI."""

import json
from pathlib import Path

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
    return output_dir, run_training(train_config_from_dict(small_config(output_dir, 6)), show_progress=False)


def gap_to_target(metrics: dict) -> float:
    return sum(abs(keep - target) for keep, target in zip(metrics["keep_ratio"].values(), TARGETS, strict=True))


def test_a_few_steps_reduce_the_loss_and_move_the_keep_ratio_to_the_target(uninterrupted):
    output_dir, history = uninterrupted
    assert [m["step"] for m in history] == [0, 1, 2, 3, 4, 5]
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
    first = run_training(train_config_from_dict(small_config(tmp_path, 3)), show_progress=False)
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 3
    second = run_training(train_config_from_dict(small_config(tmp_path, 6)), resume=True, show_progress=False)
    assert [m["step"] for m in second] == [3, 4, 5]
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
    assert "not both" in cli_error(["--config", str(config_path), "--resume", "--overwrite"], capsys)
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


def test_without_the_adversarial_loss_no_discriminator_runs_and_the_curves_are_drawn(tmp_path):
    config = small_config(tmp_path, 2)
    config["loss_weights"] = {"adversarial": {"start": 0.0, "end": 0.0}}
    history = run_training(train_config_from_dict(config), show_progress=False)
    assert all(m["loss_adversarial"] == 0 and m["discriminator_accuracy"] is None for m in history)
    assert (tmp_path / "training_curves.png").stat().st_size > 10_000


def test_a_shapes_run_ships_its_pruner_where_the_loader_finds_it(tmp_path):
    """Two steps on the shipped shapes VLM; --ship writes learned_pruner_t<T>.pt beside a copy of it, and
    load_pretrained_model(copy, pruning_method="learned", visual_token_num=T) keeps the planned counts."""
    import shutil

    import yaml

    from llava.model.builder import load_pretrained_model
    from llava.pruning.budget import geometric_keeps_for_budget

    model = tmp_path / "model"
    shutil.copytree("playground/models/shapes-llava", model, ignore=shutil.ignore_patterns("learned_pruner*"))
    config = yaml.safe_load(Path("configs/shapes_pruner.yaml").read_text())
    config["model_path"], config["training"] = str(model), {"steps": 2, "batch_size": 1, "checkpoint_every": 1}
    config_path = tmp_path / "shapes.yaml"
    config_path.write_text(yaml.safe_dump(config))
    main(["--config", str(config_path), "--output-dir", str(tmp_path / "run"), "--set", "method_settings.visual_token_num=128",
          "--ship", str(model)])
    shipped = read_checkpoint(model / "learned_pruner_t128.pt")
    assert set(shipped) == {"step", "train_config", "pruner_config", "pruner", "model"} and shipped["step"] == 2
    assert shipped["model"] == {"d_model": 64, "num_layers": 32, "visual_tokens": 576}
    assert (model / "learned_pruner_t128_training.png").is_file()
    _, llava, _, _ = load_pretrained_model(str(model), pruning_method="learned", visual_token_num=128)
    method = llava.language_model.method
    assert list(method.keep_tokens) == geometric_keeps_for_budget("learned", 128, 32, 576, [2, 8, 16, 24])

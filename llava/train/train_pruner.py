"""Train the learned visual-token pruner: ``python -m llava.train.train_pruner --config configs/vision_token_pruning.yaml``.

Writes ``<output_dir>/checkpoint.pt`` every ``training.checkpoint_every`` steps and at the end, one
JSON line per step to ``<output_dir>/train_log.jsonl`` (losses, loss weights, temperature, discriminator
accuracy, cumulative soft and hard keep ratio per pruning layer, residual weights) and, at the end, the
curves ``<output_dir>/training_curves.png``. ``--resume`` continues from the checkpoint exactly as an
uninterrupted run would. ``--set section.key=value`` overrides the YAML (ablations); ``--ship MODEL_DIR``
copies the trained pruner (no optimizer or discriminator state) and its curves beside a model as
``learned_pruner_t<T>.pt``, where ``load_pretrained_model(MODEL_DIR, pruning_method="learned",
visual_token_num=T)`` finds it.

    python -m llava.train.train_pruner --config configs/shapes_pruner.yaml --set method_settings.visual_token_num=64 \
        --output-dir checkpoints/pruner_t64 --ship playground/models/shapes-llava
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llava.eval.cli_args import model_path_problem
from llava.model.builder import TINY_MODELS
from llava.pruning.learned.checkpoint import (
    CHECKPOINT_NAME,
    inference_checkpoint,
    read_checkpoint,
    shipped_pruner_path,
)
from llava.train.pruner.config import TrainConfig, load_train_config
from llava.train.pruner.curves import plot_pruner_training
from llava.train.pruner.training import TrainState, build_train_state, train_step
from toolkit_common.cli import setting_error
from toolkit_common.jsonl import drop_incomplete_tail, drop_records_from_step, read_jsonl_strict
from toolkit_common.training import save_checkpoint

LOG_NAME = "train_log.jsonl"
CURVES_NAME = "training_curves.png"


def progress_postfix(metrics: dict[str, Any]) -> dict[str, str]:
    """Short tqdm postfix: total loss, last stage soft and hard keep ratios, temperature."""
    keep = list(metrics["keep_ratio"].values())[-1]
    hard = list(metrics["hard_keep_ratio"].values())[-1]
    return {
        "loss": f"{metrics['total']:.3f}",
        "keep": f"{keep:.3f}",
        "hard": f"{hard:.3f}",
        "tau": f"{metrics['temperature']:.3f}",
    }


class RunFolderInUseError(ValueError):
    """The output folder already holds a run, and neither resuming nor overwriting was asked for."""


RESUMABLE_SETTINGS = ("output_dir", "device", "training.steps")
"""Settings a resume may change: where the run lives, where it runs, and how far it goes."""


def run_folder_checkpoint(output_dir: Path, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None to start at step 0; nothing in the folder changes here.

    A folder holding a run needs ``resume`` or ``overwrite``; ``resume`` where nothing was checkpointed yet
    (a run killed before its first checkpoint, or a new folder) starts afresh, and says so."""
    checkpoint_path, log_path = output_dir / CHECKPOINT_NAME, output_dir / LOG_NAME
    if resume and overwrite:
        raise RunFolderInUseError("give --resume or --overwrite, not both")
    if not resume and not overwrite and (checkpoint_path.exists() or log_path.exists()):
        raise RunFolderInUseError(
            f"{output_dir} already holds a training run ({CHECKPOINT_NAME} / {LOG_NAME}): pass --resume to continue "
            "it, --overwrite to start again, or another --output-dir"
        )
    if not resume:
        return None
    if not checkpoint_path.is_file():
        print(f"--resume: nothing was checkpointed yet in {output_dir} (no {CHECKPOINT_NAME}): starting from step 0",
              file=sys.stderr)
        return None
    return read_checkpoint(checkpoint_path)


def changed_settings(config: TrainConfig, checkpoint: dict[str, Any]) -> list[str]:
    """The settings (``section.key``) of ``config`` that differ from those the checkpoint was trained with,
    other than ``RESUMABLE_SETTINGS``: a resume with them would silently train another run."""
    now, then = flat_settings(asdict(config)), flat_settings(checkpoint.get("train_config") or {})
    return [f"{key} {now.get(key)!r} (checkpoint: {then.get(key)!r})" for key in sorted(set(now) | set(then))
            if key not in RESUMABLE_SETTINGS and now.get(key) != then.get(key)]


def flat_settings(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"section.key": value}`` of nested settings (lists and tuples compared as lists)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "model_overrides":
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def reset_run_folder(output_dir: Path, checkpoint: dict[str, Any] | None) -> None:
    """Make the folder match where the run starts: without a checkpoint no earlier step remains; resuming
    at step ``t``, the log keeps steps below ``t`` (a torn last line, from a kill while writing, is dropped
    with a warning), so it never holds a step twice."""
    log_path = output_dir / LOG_NAME
    if checkpoint is None:
        (output_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
        return
    if drop_incomplete_tail(log_path):
        print(f"warning: {log_path}: dropped a torn last line (a run killed while writing it)", file=sys.stderr)
    drop_records_from_step(log_path, checkpoint["step"])


def start_training(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> TrainState:
    """The state to train from: every setting checked, the model loaded, the checkpoint restored when
    resuming; a ``ValueError`` / ``OSError`` (one line) before any file of the run folder changes."""
    output_dir = Path(config.output_dir)
    checkpoint = run_folder_checkpoint(output_dir, resume, overwrite)
    if checkpoint is not None and (changed := changed_settings(config, checkpoint)):
        raise ValueError(f"--resume with other settings than the checkpoint's: {'; '.join(changed)}; resume with the "
                         "checkpoint's settings, or pass --overwrite to start again with these")
    state = build_train_state(config)
    state.target_ratios  # noqa: B018  (a budget the model cannot reach is an error now, not at the first step)
    if checkpoint is not None:
        state.restore(checkpoint)
    reset_run_folder(output_dir, checkpoint)
    return state


def train(state: TrainState, show_progress: bool = True) -> list[dict[str, Any]]:
    """Train from ``state.step`` to ``training.steps``: log every step, checkpoint every ``checkpoint_every``
    steps and at the end, draw the curves; the metrics of the steps run."""
    config = state.config
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    history = []
    steps = config.training.steps
    with (
        open(output_dir / LOG_NAME, "a") as log,
        tqdm(total=steps, initial=state.step, disable=not show_progress, desc="pruner") as bar,
    ):
        while state.step < steps:
            metrics = train_step(state)
            history.append(metrics)
            log.write(json.dumps(metrics) + "\n")
            log.flush()
            bar.set_postfix(progress_postfix(metrics))
            bar.update(1)
            if state.step % config.training.checkpoint_every == 0 or state.step == steps:
                save_checkpoint(output_dir / CHECKPOINT_NAME, state.checkpoint())
    plot_pruner_training(read_jsonl_strict(output_dir / LOG_NAME), output_dir / CURVES_NAME, state.target_ratios,
                         run_title(config))
    return history


def run_training(
    config: TrainConfig, resume: bool = False, show_progress: bool = True, overwrite: bool = False
) -> list[dict[str, Any]]:
    """Train to ``config.training.steps`` (from the checkpoint if ``resume``; an existing run folder needs
    ``resume`` or ``overwrite``); return the metrics of the steps run."""
    return train(start_training(config, resume, overwrite), show_progress)


def run_title(config: TrainConfig) -> str:
    """One line naming the run's budget and ablation switches (the curves' title)."""
    settings = config.method_settings
    budget = settings.visual_token_num or settings.target_tokens or settings.target_keep_ratio
    residual = ("learnable" if settings.learnable_attn_weight else "fixed") if settings.use_attn_residual else "off"
    adversarial = config.loss_weights.adversarial
    return (f"learned pruner: budget {budget}, layers {settings.pruning_layers}, attention residual {residual}, "
            f"adversarial {adversarial.start:g}->{adversarial.end:g}, spectral norm {'on' if settings.use_spectral_norm else 'off'}")


def ship_pruner(output_dir: Path, model_dir: Path) -> Path:
    """Copy the run's pruner (inference part of the checkpoint) and its curves beside the model; the file
    is named by the run's ``visual_token_num`` (``shipped_pruner_path``)."""
    checkpoint = read_checkpoint(output_dir / CHECKPOINT_NAME)
    budget = checkpoint["train_config"]["method_settings"]["visual_token_num"]
    target = shipped_pruner_path(model_dir, budget)
    save_checkpoint(target, inference_checkpoint(checkpoint))
    target.with_name(target.stem + "_training.png").write_bytes((output_dir / CURVES_NAME).read_bytes())
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/vision_token_pruning.yaml", help="YAML training config")
    parser.add_argument("--output-dir", help="override output_dir of the config")
    parser.add_argument("--steps", type=int, help="override training.steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (YAML syntax, repeatable), e.g. method_settings.use_spectral_norm=false")
    parser.add_argument("--ship", type=Path, metavar="MODEL_DIR",
                        help="after training, copy the pruner beside this model as learned_pruner_t<T>.pt (needs visual_token_num)")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoint.pt")
    parser.add_argument("--overwrite", action="store_true", help="start again in an output folder that holds a run")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        setting_error(parser, f"--steps must be >= 1, got {args.steps}")
    try:
        config = load_train_config(args.config, args.overrides)
    except (OSError, ValueError) as exc:
        setting_error(parser, f"--config {args.config}: {exc}")
    if args.output_dir:
        config.output_dir = args.output_dir
    if args.steps is not None:
        config.training.steps = args.steps
    if args.ship is not None and config.method_settings.visual_token_num is None:
        setting_error(parser, "--ship names the pruner by its budget: set method_settings.visual_token_num")
    if args.ship is not None and not (args.ship / "config.json").is_file():
        setting_error(parser, f"--ship {args.ship}: no model there (config.json missing)")
    if problem := model_path_problem(config.model_path, TINY_MODELS):
        setting_error(parser, f"model_path: {problem.removeprefix('--model-path ')}")
    try:
        state = start_training(config, resume=args.resume, overwrite=args.overwrite)
    except (OSError, ValueError) as exc:
        setting_error(parser, "; ".join(str(exc).splitlines()) or type(exc).__name__)
    history = train(state)
    if history:
        first, last = history[0], history[-1]
        print(
            f"steps {first['step']}..{last['step']}: total loss {first['total']:.4f} -> {last['total']:.4f}; "
            f"keep ratio {first['keep_ratio']} -> {last['keep_ratio']}; residual weight {last['residual_weight']}"
        )
    print(f"checkpoint: {Path(config.output_dir) / CHECKPOINT_NAME}")
    if args.ship is not None:
        print(f"shipped: {ship_pruner(Path(config.output_dir), args.ship)}")


if __name__ == "__main__":
    main()

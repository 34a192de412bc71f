"""Checkpoints of the learned pruner: everything training needs to resume, and the pruner alone for inference.

A checkpoint is a ``torch.save`` dict of tensors and plain values (loadable with ``weights_only=True``):
``step``, ``train_config``, ``pruner_config``, ``pruner``, ``discriminator``, ``pruner_optimizer``,
``discriminator_optimizer``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from llava.pruning.learned.heads import LayerSpecificPruner, PrunerConfig

CHECKPOINT_NAME = "checkpoint.pt"


def existing_checkpoint(path: str | Path) -> Path:
    """``path`` resolved; a clear ``FileNotFoundError`` when there is no file."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no pruner checkpoint at {path} (train one with python -m llava.train.train_pruner)")
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(existing_checkpoint(path), map_location="cpu", weights_only=True)


def pruner_from_checkpoint(checkpoint: dict[str, Any]) -> LayerSpecificPruner:
    """The trained ``LayerSpecificPruner`` of a checkpoint, in eval mode."""
    pruner = LayerSpecificPruner(PrunerConfig(**checkpoint["pruner_config"]))
    pruner.load_state_dict(checkpoint["pruner"])
    return pruner.eval()


def pruner_config_dict(pruner: LayerSpecificPruner) -> dict[str, Any]:
    return asdict(pruner.config)


def shipped_pruner_path(model_dir: str | Path, visual_token_num: float | None) -> Path:
    """Where a model folder ships its pruner for a budget: ``learned_pruner_t<T>.pt`` (``learned_pruner.pt``
    without a budget: the threshold rule)."""
    name = "learned_pruner.pt" if visual_token_num is None else f"learned_pruner_t{visual_token_num:g}.pt"
    return Path(model_dir) / name


def inference_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What inference needs of a training checkpoint (the pruner and its settings; no optimizer or
    discriminator state): the file shipped beside a model."""
    return {key: checkpoint[key] for key in ("step", "train_config", "pruner_config", "pruner")}

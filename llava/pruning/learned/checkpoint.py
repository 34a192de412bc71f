"""Checkpoints of the learned pruner: everything training needs to resume, and the pruner alone for inference.

A checkpoint is a ``torch.save`` dict of tensors and plain values (loadable with ``weights_only=True``):
``step``, ``train_config``, ``pruner_config``, ``pruner``, ``discriminator``, ``pruner_optimizer``,
``discriminator_optimizer`` and ``model`` (``model_record``: width, layers and visual tokens of the model the
pruner was trained for, so that it is refused on another model: ``pruner_fit_problem``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from llava.pruning.learned.heads import LayerSpecificPruner, PrunerConfig

CHECKPOINT_NAME = "checkpoint.pt"
PRUNER_KEYS = ("pruner_config", "pruner")
MODEL_KEY = "model"  # the model the pruner was trained for (``model_record``)


def existing_checkpoint(path: str | Path) -> Path:
    """``path`` resolved; a clear ``FileNotFoundError`` when there is no file."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no pruner checkpoint at {path} (train one with python -m llava.train.train_pruner)")
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``; a one-line ``ValueError`` when the file is truncated (a copy or a training
    run killed mid-write) or not a checkpoint at all, so no caller goes on with it."""
    path = existing_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises RuntimeError, EOFError, UnpicklingError, ... on a bad file)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"pruner checkpoint {path} is unreadable, truncated or not a torch checkpoint ({reason}): "
                         "train or copy it again") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"pruner checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def pruner_from_checkpoint(checkpoint: dict[str, Any]) -> LayerSpecificPruner:
    """The trained ``LayerSpecificPruner`` of a checkpoint, in eval mode; a ``ValueError`` when the checkpoint
    holds no pruner (e.g. a merger's) or its weights do not fit its recorded architecture."""
    missing = [key for key in PRUNER_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"the checkpoint holds no learned pruner (missing {', '.join(missing)}; it has "
                         f"{', '.join(sorted(checkpoint)) or 'nothing'})")
    try:
        pruner = LayerSpecificPruner(PrunerConfig(**checkpoint["pruner_config"]))
        pruner.load_state_dict(checkpoint["pruner"])
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"the checkpoint's pruner weights do not fit its pruner_config ({str(error).splitlines()[0]})") from None
    return pruner.eval()


def model_record(d_model: int, num_layers: int, visual_tokens: int) -> dict[str, int]:
    """What a checkpoint records of the model its pruner was trained for (``MODEL_KEY``)."""
    return {"d_model": d_model, "num_layers": num_layers, "visual_tokens": visual_tokens}


def pruner_fit_problem(checkpoint: dict[str, Any], d_model: int, num_layers: int, visual_tokens: int | None) -> str | None:
    """Why the checkpoint's pruner was trained for another model than one of width ``d_model`` with
    ``num_layers`` layers and ``visual_tokens`` per image (None: unknown), or None when it fits. Checkpoints
    written before ``MODEL_KEY`` was recorded are checked on their width and pruning layers only."""
    trained = dict(checkpoint.get(MODEL_KEY) or {})
    trained.setdefault("d_model", checkpoint.get("pruner_config", {}).get("d_model"))
    current = model_record(d_model, num_layers, visual_tokens) if visual_tokens is not None else {
        "d_model": d_model, "num_layers": num_layers}
    differing = [f"{key} {trained[key]} (this model: {value})" for key, value in current.items()
                 if trained.get(key) is not None and trained[key] != value]
    layers = checkpoint.get("pruner_config", {}).get("pruning_layers") or []
    if layers and max(layers) >= num_layers:
        differing.append(f"pruning layers {layers} (this model has {num_layers} layers)")
    if not differing:
        return None
    return f"the learned pruner was trained for another model: {'; '.join(differing)}"


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
    return {key: checkpoint[key] for key in ("step", "train_config", "pruner_config", "pruner", MODEL_KEY) if key in checkpoint}

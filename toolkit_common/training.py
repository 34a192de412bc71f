"""What the project's training loops share: atomic checkpoints, resuming, the warm-up + cosine schedule,
and JSON-lines step logs.

A checkpoint is a ``torch.save`` dict of tensors and plain values, so it loads with ``weights_only=True``;
it is written to a temporary file and renamed, so an interruption never leaves a truncated one.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temporary file, then rename): an interrupted save keeps the last one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (``weights_only=True``, on the CPU), or ``None`` when there is none."""
    path = Path(path)
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def resume(path: str | Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> int:
    """Load ``modules`` (by their checkpoint keys) and ``optimizer`` from ``path`` if it exists; the step
    to start at (0 without a checkpoint)."""
    state = load_checkpoint(path)
    if state is None:
        return 0
    for key, module in modules.items():
        module.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"]


def warmup_cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps to ``peak``, then cosine decay to ``floor * peak`` at ``total``:

        lr(t) = peak * (t + 1) / warmup                                   (t < warmup)
        lr(t) = peak * (floor + (1 - floor) * (1 + cos(pi * p)) / 2),  p = (t - warmup) / (total - warmup)
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def append_log(path: str | Path, row: dict) -> None:
    """Append one JSON line (a training step's record)."""
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def read_log(path: str | Path) -> list[dict]:
    """Every record of a step log (empty when the file does not exist)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line] if path.exists() else []


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """A training invocation's command-line settings as JSON values (paths as strings, keys sorted), the row a
    trainer appends to its ``runs.jsonl``."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in sorted(vars(args).items())}

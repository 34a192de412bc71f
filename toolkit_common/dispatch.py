"""Modules that accelerate may have dispatched (``device_map``): the device one computes on, and its weights
made present for code that reads them outside the module's own ``forward`` (attention scoring)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch


def layer_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on: accelerate's execution device when it is dispatched, else its weights'."""
    hook = getattr(module, "_hf_hook", None)
    execution_device = getattr(hook, "execution_device", None)
    if execution_device is not None:
        return torch.device(execution_device)
    return next(module.parameters()).device


def materialized(module: torch.nn.Module) -> AbstractContextManager:
    """Context in which ``module``'s weights are on its execution device (loaded when accelerate offloaded them
    to the CPU or disk), for reading a layer's projections outside its own ``forward`` (scoring)."""
    from accelerate.utils import align_module_device

    return align_module_device(module)

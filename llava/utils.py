"""LLaVA's ``llava.utils`` names that scripts written for LLaVA import."""

from __future__ import annotations


def disable_torch_init() -> None:
    """LLaVA's start-up shortcut (it skipped ``nn.Linear`` / ``nn.LayerNorm`` initialisation before loading
    weights). transformers v5 builds a checkpoint's modules without initialising them, so there is nothing to
    skip: a no-op, kept so LLaVA scripts run unchanged (patching torch globally would also change every model
    built by hand later in the process, e.g. a tiny random one)."""

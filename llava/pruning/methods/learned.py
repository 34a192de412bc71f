"""The trained layer-wise pruner as engine method ``learned``: hard masks and real removal, or soft masks.

At each pruning layer ``L`` of the checkpoint the head scores the live span tokens from the hidden
states entering ``L`` (question rows: tokens after the span up to the last prompt token) and keeps
those with ``sigmoid(l_j) > 0.5``; the engine then removes the others (shorter KV cache from ``L`` on).
With the attention residual on, the text->vision attention comes from layer ``L``'s own q.k
(``step.attention``); with it off, no attention is computed.

Two hard rules:

* **planned** (``keep_tokens`` set, what a ``visual_token_num`` budget gives): each pruning layer keeps
  exactly its planned count, the top-``K_i`` keep logits. The counts come from the geometric schedule
  that costs the budget over the checkpoint's pruning layers (``geometric_keeps_for_budget``, PDrop's
  plan): for 32 layers and layers ``[2, 8, 16, 24]``, 64 tokens -> ``[113, 22, 4, 1]``.
* **threshold** (no ``keep_tokens``): every sample keeps exactly its own ``> 0.5`` set (at least one
  token); a batch keeps the largest count and marks the surplus slots of the other samples invalid
  (padding, invisible to every later layer), so batch size N gives the same answers as batch size 1.

Soft mode (training, ``LearnedPruning.from_pruner(pruner, temperature=...)``): the same heads give
binary Gumbel-softmax keep probabilities (``llava.pruning.learned.masks``), which the engine applies as a
key bias instead of removing tokens, so every loss reaches the heads.

Config: ``pruning_method="learned"``, ``pruning_params={"pruner_checkpoint": path}``
(``load_pretrained_model(path, pruning_method="learned", pruner_checkpoint=...)``). With a budget and no
``pruner_checkpoint``, the loader takes the pruner shipped with the model for that budget,
``<model>/learned_pruner_t<T>.pt`` (``shipped_pruner_path``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from llava.pruning.budget import geometric_keeps_for_budget
from llava.pruning.learned.checkpoint import (
    MODEL_KEY,
    existing_checkpoint,
    pruner_fit_problem,
    pruner_from_checkpoint,
    read_checkpoint,
    shipped_pruner_path,
)
from llava.pruning.learned.heads import LayerSpecificPruner
from llava.pruning.learned.masks import gumbel_keep_probs
from llava.pruning.learned.text_attention import gather_tokens, question_rows, text_to_vision_attention
from llava.pruning.methods.base import PruneStep, PruningMethod, register_method, without_budget_fields
from llava.pruning.selection import SoftSelection, TokenSelection, top_r_sorted


@lru_cache(maxsize=4)
def _cached_checkpoint(path: str, modified_ns: int) -> tuple[dict[str, Any], LayerSpecificPruner]:
    del modified_ns  # part of the cache key: a rewritten checkpoint is reloaded
    checkpoint = read_checkpoint(path)
    trained_for = {key: checkpoint[key] for key in (MODEL_KEY, "pruner_config") if key in checkpoint}
    return trained_for, pruner_from_checkpoint(checkpoint)


def loaded_checkpoint(path: str | Path) -> tuple[dict[str, Any], LayerSpecificPruner]:
    """What a checkpoint says of the model it was trained for (``pruner_fit_problem``'s input) and its pruner,
    read once per file version."""
    path = existing_checkpoint(path)
    return _cached_checkpoint(str(path), path.stat().st_mtime_ns)


def load_pruner(path: str | Path) -> LayerSpecificPruner:
    """The pruner of a checkpoint, loaded once per file version."""
    return loaded_checkpoint(path)[1]


def per_sample_keep(logits: torch.Tensor, upper: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``[B, R]`` (ascending) and validity ``[B, R]`` of each sample's tokens with ``l > 0``.

    Sample ``b`` keeps ``c_b = #{j: l_bj > 0}`` tokens, clamped to ``[1, upper]``; ``R = max_b c_b`` and the
    columns beyond a sample's own ``c_b`` best are marked invalid. ``R`` is the data's, so reading it is the one
    host sync of the threshold rule (the planned rule's counts are known beforehand).
    """
    counts = (logits > 0).sum(dim=1).clamp(1, upper)
    width = int(counts.max())
    indices = top_r_sorted(logits, width)
    ranks = logits.argsort(dim=1, descending=True).argsort(dim=1)  # rank of every token by its logit
    valid = ranks.gather(1, indices) < counts[:, None]
    return indices, valid


@register_method
@dataclass
class LearnedPruning(PruningMethod):
    """``pruner_checkpoint``: path of a checkpoint written by ``llava.train.train_pruner``;
    ``keep_tokens``: tokens kept after each pruning layer (the planned rule), or None (the threshold rule)."""

    pruner_checkpoint: str | None = None
    keep_tokens: tuple[int, ...] | None = None
    pruner: LayerSpecificPruner | None = field(default=None, init=False, repr=False, compare=False)
    temperature: float | None = field(default=None, init=False)  # soft mode when set
    generator: torch.Generator | None = field(default=None, init=False, repr=False, compare=False)

    name = "learned"

    def __post_init__(self) -> None:
        if self.pruner_checkpoint is None:
            raise ValueError(
                "method 'learned' needs pruner_checkpoint=<path to checkpoint.pt> "
                "(load_pretrained_model(..., pruning_method='learned', pruner_checkpoint=path))"
            )
        self.pruner = load_pruner(self.pruner_checkpoint)
        if self.keep_tokens is not None:
            self.keep_tokens = tuple(int(k) for k in self.keep_tokens)
            layers = self.pruner.pruning_layers
            if len(self.keep_tokens) != len(layers) or min(self.keep_tokens) < 1:
                raise ValueError(
                    f"learned: keep_tokens {list(self.keep_tokens)} must give one count >= 1 per pruning layer "
                    f"of the checkpoint ({layers})"
                )
            if list(self.keep_tokens) != sorted(self.keep_tokens, reverse=True):
                raise ValueError(f"learned: keep_tokens are cumulative and cannot grow, got {list(self.keep_tokens)}")

    @classmethod
    def params_for_model(
        cls, params: Mapping[str, Any], model_path: str | None, visual_token_num: float | None
    ) -> dict[str, Any]:
        """Without a ``pruner_checkpoint``, the pruner a local model folder ships for the budget
        (``shipped_pruner_path``)."""
        params = dict(params)
        if "pruner_checkpoint" not in params and model_path and Path(model_path).is_dir():
            params["pruner_checkpoint"] = str(shipped_pruner_path(model_path, visual_token_num))
        return params

    @classmethod
    def from_pruner(
        cls, pruner: LayerSpecificPruner, temperature: float | None = None, generator: torch.Generator | None = None
    ) -> LearnedPruning:
        """A method around an in-memory pruner (training): soft masks at ``temperature`` when it is given."""
        method = cls.__new__(cls)
        method.pruner_checkpoint, method.pruner, method.keep_tokens = None, pruner, None
        method.temperature, method.generator = temperature, generator
        return method

    def validate(
        self, num_layers: int, span: int | None, num_heads: int | None = None, hidden_size: int | None = None
    ) -> None:
        """The common checks, and that the checkpoint's pruner was trained for a model of this shape
        (``pruner_fit_problem``: width, layers, visual tokens)."""
        super().validate(num_layers, span, num_heads, hidden_size)
        if self.pruner_checkpoint is not None and hidden_size is not None:
            problem = pruner_fit_problem(loaded_checkpoint(self.pruner_checkpoint)[0], hidden_size,
                                         num_layers, span)
            if problem is not None:
                raise ValueError(f"learned: {problem}")

    @property
    def soft(self) -> bool:
        return self.temperature is not None

    def schedule(self, span: int) -> list[tuple[int, int]]:
        """The checkpoint's pruning layers with the planned counts, or the span as an upper bound (the
        threshold rule: the mask decides)."""
        keeps = self.keep_tokens or [span] * len(self.pruner.pruning_layers)
        return list(zip(self.pruner.pruning_layers, keeps, strict=True))

    def keep_logits(self, step: PruneStep) -> torch.Tensor:
        """``[B, S]`` keep logits of the live span tokens at ``step.layer`` (invalid slots at -inf)."""
        hidden = step.hidden_states
        rows, row_weights = question_rows(step.span_index[:, -1] + 1, step.query_index)
        attention = None
        if self.pruner.uses_attn_residual:
            attention = text_to_vision_attention(step.attention(step.layer, rows), row_weights, step.span_index)
        pruner = self.pruner.to(hidden.device)
        logits = pruner(
            step.layer,
            gather_tokens(hidden, step.span_index).float(),
            gather_tokens(hidden, rows).float(),
            row_weights > 0,
            attention,
        )
        return logits.masked_fill(~step.span_valid, torch.finfo(logits.dtype).min)

    def select(self, step: PruneStep, keep: int) -> TokenSelection | SoftSelection:
        metadata = {"method": self.name, "checkpoint": self.pruner_checkpoint}
        if self.soft:
            logits = self.keep_logits(step)
            return SoftSelection(gumbel_keep_probs(logits, self.temperature, self.generator), logits, metadata)
        with torch.no_grad():
            logits = self.keep_logits(step)
        if self.keep_tokens is not None:  # planned: the top-K_i keep logits
            indices, valid = top_r_sorted(logits, keep), None
            metadata["kept"] = [keep] * len(indices)
        else:
            indices, valid = per_sample_keep(logits, keep)
            metadata["kept"] = valid.sum(dim=1)  # [B], read as a list
        return TokenSelection(indices=indices, scores=torch.sigmoid(logits), device_metadata=metadata, valid=valid)

    @classmethod
    def for_budget(
        cls, target_tokens: float, num_layers: int, span: int, params: Mapping[str, Any] | None = None
    ) -> LearnedPruning:
        """The checkpoint's pruning layers keeping the geometric schedule that costs ``target_tokens``."""
        params = without_budget_fields(cls, params, ("keep_tokens",))
        if params.get("pruner_checkpoint") is None:
            raise ValueError(
                f"learned: a budget of {target_tokens:g} tokens needs pruner_checkpoint=<path> (or a model folder "
                f"that ships learned_pruner_t{target_tokens:g}.pt)"
            )
        layers = load_pruner(params["pruner_checkpoint"]).pruning_layers
        keeps = geometric_keeps_for_budget("learned", target_tokens, num_layers, span, layers)
        return cls.from_params({**params, "keep_tokens": tuple(keeps)})

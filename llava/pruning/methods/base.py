"""The interface between the pruning engine and a method (a "selector")."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from llava.pruning.budget import flops_matched_keep
from llava.pruning.selection import TokenSelection

AttentionFn = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class PruneStep:
    """What the engine hands a method at one pruning boundary, during prefill.

    Attributes:
        layer: index of the decoder layer about to run on the shorter sequence.
        stage: 0 for the first boundary of the method, 1 for the next, ...
        span_index: ``[B, S]`` index in the current (possibly already compacted) sequence of each live
            span token, ascending.
        query_index: ``[B]`` current index of the selection query (the last prompt token).
        hidden_states: ``[B, N, d]`` hidden states entering ``layer``.
        attention: ``attention(layer, query_index [B, Q]) -> [B, H, Q, N]`` probabilities of those
            query rows at ``layer`` (``layer - 1`` or ``layer``), from q.k, never the N x N map.
        original_index: ``[B, N]`` index in the unpruned input of each current token.
        original_span: ``[B, 2]`` (start, end) of the span in the unpruned input.
        input_embeddings: ``[B, N_0, d]`` the decoder's input embeddings of the *unpruned* input (layer 0),
            for methods that rate tokens before any layer (SparseVLM's text raters).
        rope: ``(cos, sin)``, each ``[B, N, head_dim]``, the rotary embedding of the current tokens at their
            original positions (SparseVLM v2's positional-bias correction).
    """

    layer: int
    stage: int
    span_index: torch.Tensor
    query_index: torch.Tensor
    hidden_states: torch.Tensor
    attention: AttentionFn
    original_index: torch.Tensor
    original_span: torch.Tensor
    input_embeddings: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]

    def query_attention_over_span(self, layer: int) -> torch.Tensor:
        """Attention of the selection query over the live span tokens at ``layer``, ``[B, H, S]``."""
        probs = self.attention(layer, self.query_index[:, None])[:, :, 0]  # [B, H, N]
        index = self.span_index[:, None, :].expand(-1, probs.shape[1], -1)
        return probs.gather(-1, index)


class PruningMethod(ABC):
    """A pruning method: where it prunes, how many tokens it keeps, and which ones.

    Subclasses are small dataclasses registered by name (``llava.pruning.registry``).
    """

    name: ClassVar[str]
    params: ClassVar[tuple[str, ...]] = ()  # the ``pruning_params`` keys the method reads

    @abstractmethod
    def schedule(self, span: int) -> list[tuple[int, int]]:
        """``[(layer, keep), ...]``: before each ``layer`` the span shrinks to ``keep`` tokens."""

    @abstractmethod
    def select(self, step: PruneStep, keep: int) -> TokenSelection:
        """Choose ``keep`` of the live span tokens; indices into ``step.span_index`` columns, ascending."""

    def validate(self, num_layers: int, span: int | None) -> None:
        """Raise ``ValueError`` for parameters that cannot work with this model (``span`` may be unknown)."""
        stages = self.schedule(span if span is not None else 10**9)
        for layer, keep in stages:
            if not 0 < layer < num_layers:
                raise ValueError(
                    f"{self.name}: pruning layer {layer} must lie in [1, {num_layers - 1}] for a model with "
                    f"{num_layers} layers"
                )
            if keep is None or keep <= 0:
                raise ValueError(
                    f"{self.name}: tokens to keep must be >= 1 (set fast_v_attention_rank or a visual_token_num "
                    f"budget), got {keep}"
                )
        if span is not None:
            for _, keep in stages:
                if keep > span:
                    raise ValueError(
                        f"{self.name}: cannot keep {keep} tokens of a span of {span}; valid range is [1, {span}]"
                    )

    @classmethod
    @abstractmethod
    def from_config(cls, config: Any) -> PruningMethod:
        """Build from a ``PruningLlamaConfig`` (FastV field names, plus ``pruning_params``)."""

    @classmethod
    @abstractmethod
    def config_for_budget(cls, target_tokens: float, num_layers: int, span: int, config: Any) -> dict[str, Any]:
        """Config fields (to set on ``config``) that make the method cost ``target_tokens`` equivalent tokens."""


@dataclass
class SinglePruneMethod(PruningMethod):
    """A method that prunes once, before layer ``agg_layer`` (K), to ``keep`` (R) span tokens."""

    agg_layer: int = 2
    keep: int = 144

    def schedule(self, span: int) -> list[tuple[int, int]]:
        return [(self.agg_layer, self.keep)]

    @classmethod
    def config_for_budget(cls, target_tokens: float, num_layers: int, span: int, config: Any) -> dict[str, Any]:
        """Config fields that make this method cost ``target_tokens`` equivalent tokens: the FLOPs-matched R."""
        keep = flops_matched_keep(target_tokens, num_layers, config.fast_v_agg_layer, span)
        return {"fast_v_attention_rank": keep}


def validate_stages(method: str, layers: tuple[int, ...], amounts: tuple[float, ...], names: tuple[str, str]) -> None:
    """A staged schedule needs as many amounts as layers (at least one), layers strictly increasing and
    amounts (kept tokens or ratios) non-increasing; ``names`` are the two parameters' names for the error."""
    layers_name, amounts_name = names
    if len(layers) != len(amounts) or not layers:
        raise ValueError(
            f"{method}: {layers_name} {list(layers)} and {amounts_name} {list(amounts)} must be non-empty "
            "and of equal length"
        )
    if any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
        raise ValueError(f"{method}: {layers_name} must be strictly increasing, got {list(layers)}")
    if any(b > a for a, b in zip(amounts, amounts[1:], strict=False)):
        raise ValueError(f"{method}: {amounts_name} must be non-increasing, got {list(amounts)}")

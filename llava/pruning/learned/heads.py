"""Keep-logit heads: one ``VisionPrunerHead`` per pruning layer, grouped in a ``LayerSpecificPruner``.

A head scores every live vision token ``v_j`` against the question tokens ``q_1..q_T`` of the same
layer:

    c_j   = CrossAttention(query = LN(v_j), keys = values = LN(q_1..q_T))
    l_j   = MLP([LN(v_j) ; c_j])                                   (keep logit)
    l_j  += w * a_j                                                (only with the attention residual)

where ``a_j`` is the LLM layer's own text->vision attention (mean over heads and question rows,
``llava.pruning.learned.text_attention``) and ``w`` is a buffer (fixed) or an ``nn.Parameter`` (learnable).
The MLP's output layer starts at zero, so an untrained head ranks by ``w a_j``: with a random output layer
(the first shapes-VLM runs) the MLP's logits outgrew ``w a_j`` during training and the pruner at 64 tokens
kept 0 % of the asked cell's patches at layer 2 on 8 of 12 one-cell questions, where the attention
alone keeps 28-100 % (PDrop 25-100 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class PrunerConfig:
    """Architecture of a ``LayerSpecificPruner`` (saved in checkpoints to rebuild it).

    ``attn_residual_weight``: one initial weight for every layer, or one per pruning layer.
    """

    d_model: int
    pruning_layers: list[int] = field(default_factory=lambda: [6, 12, 18])
    hidden_dim: int = 128
    num_heads: int = 4
    use_attn_residual: bool = False
    attn_residual_weight: float | list[float] = 1.0
    learnable_attn_weight: bool = False

    def __post_init__(self) -> None:
        if not self.pruning_layers or sorted(set(self.pruning_layers)) != list(self.pruning_layers):
            raise ValueError(f"pruning_layers must be a non-empty strictly increasing list, got {self.pruning_layers}")
        if self.d_model % self.num_heads != 0:
            raise ValueError(f"d_model {self.d_model} must be divisible by num_heads {self.num_heads}")
        if self.hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {self.hidden_dim}")
        if isinstance(self.attn_residual_weight, list) and len(self.attn_residual_weight) != len(self.pruning_layers):
            raise ValueError(
                f"attn_residual_weight lists one weight per pruning layer: got {len(self.attn_residual_weight)} "
                f"weights for layers {self.pruning_layers}"
            )

    def residual_weight_for(self, layer: int) -> float:
        """Initial residual weight of the head at ``layer``."""
        weights = self.attn_residual_weight
        return float(weights[self.pruning_layers.index(layer)] if isinstance(weights, list) else weights)


class VisionPrunerHead(nn.Module):
    """Keep logits ``[B, S]`` for ``S`` vision tokens given ``T`` question tokens (see module docstring)."""

    def __init__(
        self,
        d_model: int,
        hidden_dim: int = 128,
        num_heads: int = 4,
        use_attn_residual: bool = False,
        attn_residual_weight: float = 1.0,
        learnable_attn_weight: bool = False,
    ) -> None:
        super().__init__()
        self.vision_norm = nn.LayerNorm(d_model)
        self.question_norm = nn.LayerNorm(d_model)
        self.cross_attention = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
        nn.init.zeros_(self.mlp[-1].weight)  # a fresh head starts at l_j = w a_j (the attention ranking), or
        nn.init.zeros_(self.mlp[-1].bias)  # at 0 without the residual; the MLP learns corrections from there
        self.use_attn_residual = use_attn_residual
        if use_attn_residual:
            weight = torch.tensor(float(attn_residual_weight))
            if learnable_attn_weight:
                self.attn_residual_weight = nn.Parameter(weight)
            else:
                self.register_buffer("attn_residual_weight", weight)

    def forward(
        self,
        vision: torch.Tensor,
        question: torch.Tensor,
        question_valid: torch.Tensor,
        text_attention: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Keep logits.

        Args:
            vision: ``[B, S, d]`` hidden states of the live vision tokens entering the pruning layer.
            question: ``[B, T, d]`` hidden states of the question tokens at the same layer.
            question_valid: ``[B, T]`` bool, False for padded question rows.
            text_attention: ``[B, S]`` text->vision attention; required iff the residual is on.
        """
        if self.use_attn_residual and text_attention is None:
            raise ValueError("this head uses the attention residual: pass text_attention [B, S]")
        if not self.use_attn_residual and text_attention is not None:
            raise ValueError(
                "this head has no attention residual (use_attn_residual=False): do not pass text_attention"
            )
        vision_normed = self.vision_norm(vision)
        question_normed = self.question_norm(question)
        context, _ = self.cross_attention(
            vision_normed, question_normed, question_normed, key_padding_mask=~question_valid, need_weights=False
        )
        logits = self.mlp(torch.cat([vision_normed, context], dim=-1)).squeeze(-1)
        if self.use_attn_residual:
            logits = logits + self.attn_residual_weight * text_attention
        return logits


class LayerSpecificPruner(nn.Module):
    """One ``VisionPrunerHead`` per pruning layer (default layers 6, 12, 18)."""

    def __init__(self, config: PrunerConfig) -> None:
        super().__init__()
        self.config = config
        self.heads = nn.ModuleDict(
            {
                str(layer): VisionPrunerHead(
                    config.d_model,
                    hidden_dim=config.hidden_dim,
                    num_heads=config.num_heads,
                    use_attn_residual=config.use_attn_residual,
                    attn_residual_weight=config.residual_weight_for(layer),
                    learnable_attn_weight=config.learnable_attn_weight,
                )
                for layer in config.pruning_layers
            }
        )

    @property
    def pruning_layers(self) -> list[int]:
        return list(self.config.pruning_layers)

    @property
    def uses_attn_residual(self) -> bool:
        """Whether the heads need the text->vision attention (computed only then)."""
        return self.config.use_attn_residual

    def head(self, layer: int) -> VisionPrunerHead:
        if str(layer) not in self.heads:
            raise ValueError(f"no pruner head for layer {layer}; pruning layers: {self.pruning_layers}")
        return self.heads[str(layer)]

    def forward(
        self,
        layer: int,
        vision: torch.Tensor,
        question: torch.Tensor,
        question_valid: torch.Tensor,
        text_attention: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Keep logits ``[B, S]`` of the head at ``layer`` (arguments as ``VisionPrunerHead.forward``)."""
        return self.head(layer)(vision, question, question_valid, text_attention)

    def residual_weights(self) -> dict[int, float]:
        """Current residual weight per layer (empty without the residual), for logs."""
        if not self.uses_attn_residual:
            return {}
        return {layer: float(self.head(layer).attn_residual_weight.detach()) for layer in self.pruning_layers}

"""Architecture adapters: one place that knows how Llama and GPT-NeoX lay out attention heads.

Everything else in ``kvcompress`` talks to attention layers through an :class:`ArchitectureAdapter`:

* Llama (``LlamaForCausalLM``): separate ``q_proj``/``k_proj``/``v_proj``/``o_proj``, full RoPE, GQA
  (query head ``h`` reads KV head ``h // (H_q / H_kv)``).
* GPT-NeoX (``GPTNeoXForCausalLM``, Pythia): one fused ``query_key_value`` projection whose output rows
  are interleaved per head, ``[q_h | k_h | v_h]`` for head ``h`` (rows ``3·D·h ... 3·D·(h+1)``),
  output projection ``dense``, rotary on a fraction of the head dims, parallel residual. MHA: H_kv = H_q.

Head counts are read from the weights, so they stay right after structural pruning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelShape:
    """Original head geometry of a model: ``num_layers x num_query_heads`` with ``num_kv_heads`` KV heads."""

    num_layers: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head, ``H_q / H_kv``."""
        return self.num_query_heads // self.num_kv_heads

    def kv_head_of(self, query_head: int) -> int:
        """KV head read by an (original) query head: ``h // group_size``."""
        return query_head // self.group_size

    def query_heads_of(self, kv_head: int) -> list[int]:
        """Original query heads sharing one KV head."""
        return list(range(kv_head * self.group_size, (kv_head + 1) * self.group_size))

    def as_dict(self) -> dict[str, int]:
        return {
            "num_layers": self.num_layers,
            "num_query_heads": self.num_query_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
        }


def select_linear_rows_or_columns(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """Return a new ``nn.Linear`` keeping ``index`` along ``dim`` of its weight (0: outputs, 1: inputs).

    The bias follows the outputs (kept as is when inputs are sliced). dtype and device are preserved.
    """
    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index).clone()
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach()[index] if dim == 0 else linear.bias.detach())
    return new


def head_rows(heads: Sequence[int], rows_per_head: int) -> torch.Tensor:
    """Row indices ``[h·r, (h+1)·r)`` for every head ``h`` in order."""
    if len(heads) == 0:
        return torch.zeros(0, dtype=torch.long)
    base = torch.as_tensor(list(heads), dtype=torch.long)[:, None] * rows_per_head
    return (base + torch.arange(rows_per_head)).reshape(-1)


class ArchitectureAdapter(ABC):
    """How to find and reshape the attention heads of one architecture."""

    name: str

    @abstractmethod
    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """Attention modules in layer order."""

    @abstractmethod
    def model_shape(self, model: nn.Module) -> ModelShape:
        """Original head geometry, from the config."""

    @abstractmethod
    def decoder(self, model: nn.Module) -> tuple[nn.Module, str]:
        """The decoder stack (holding ``layers``, an ``nn.ModuleList``) and its token embedding's attribute name."""

    @abstractmethod
    def head_dim(self, attention: nn.Module) -> int:
        """Per-head dimension ``D``."""

    @abstractmethod
    def projections(self, attention: nn.Module) -> dict[str, nn.Linear]:
        """The attention's linear sub-modules by attribute name (snapshot for undo)."""

    @abstractmethod
    def output_projection(self, attention: nn.Module) -> nn.Linear:
        """Linear map from the concatenated head outputs to the residual stream."""

    @abstractmethod
    def num_query_heads(self, attention: nn.Module) -> int:
        """Query heads currently present in this attention module."""

    @abstractmethod
    def num_kv_heads(self, attention: nn.Module) -> int:
        """KV heads currently present in this attention module."""

    @abstractmethod
    def keep_heads(self, attention: nn.Module, query_index: Sequence[int], kv_index: Sequence[int]) -> None:
        """Structurally keep only the given (current) query and KV head indices, slicing the weights."""

    def restore_projections(self, attention: nn.Module, projections: dict[str, nn.Linear]) -> None:
        """Put back linear sub-modules saved with :meth:`projections`."""
        for name, linear in projections.items():
            setattr(attention, name, linear)

    def output_weight_per_head(self, attention: nn.Module) -> torch.Tensor:
        """Output projection split by head: ``W_o`` of shape ``[hidden, H·D]`` -> ``[H, hidden, D]``."""
        weight = self.output_projection(attention).weight
        dim = self.head_dim(attention)
        return weight.view(weight.shape[0], -1, dim).permute(1, 0, 2)


class LlamaAdapter(ArchitectureAdapter):
    """Llama-family decoders (Llama, SmolLM2, Mistral-like) with separate q/k/v/o projections and GQA."""

    name = "llama"

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        return [layer.self_attn for layer in model.model.layers]

    def decoder(self, model: nn.Module) -> tuple[nn.Module, str]:
        return model.model, "embed_tokens"

    def model_shape(self, model: nn.Module) -> ModelShape:
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return ModelShape(config.num_hidden_layers, config.num_attention_heads,
                          config.num_key_value_heads, head_dim)

    def head_dim(self, attention: nn.Module) -> int:
        return attention.head_dim

    def projections(self, attention: nn.Module) -> dict[str, nn.Linear]:
        return {name: getattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}

    def output_projection(self, attention: nn.Module) -> nn.Linear:
        return attention.o_proj

    def num_query_heads(self, attention: nn.Module) -> int:
        return attention.q_proj.out_features // attention.head_dim

    def num_kv_heads(self, attention: nn.Module) -> int:
        return attention.k_proj.out_features // attention.head_dim

    def keep_heads(self, attention: nn.Module, query_index: Sequence[int], kv_index: Sequence[int]) -> None:
        dim = attention.head_dim
        query_rows, kv_rows = head_rows(query_index, dim), head_rows(kv_index, dim)
        attention.q_proj = select_linear_rows_or_columns(attention.q_proj, query_rows, 0)
        attention.k_proj = select_linear_rows_or_columns(attention.k_proj, kv_rows, 0)
        attention.v_proj = select_linear_rows_or_columns(attention.v_proj, kv_rows, 0)
        attention.o_proj = select_linear_rows_or_columns(attention.o_proj, query_rows, 1)


class GPTNeoXAdapter(ArchitectureAdapter):
    """GPT-NeoX / Pythia: fused ``query_key_value`` interleaved per head, ``dense`` output, MHA."""

    name = "gpt_neox"

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        return [layer.attention for layer in model.gpt_neox.layers]

    def decoder(self, model: nn.Module) -> tuple[nn.Module, str]:
        return model.gpt_neox, "embed_in"

    def model_shape(self, model: nn.Module) -> ModelShape:
        config = model.config
        heads = config.num_attention_heads
        return ModelShape(config.num_hidden_layers, heads, heads, config.hidden_size // heads)

    def head_dim(self, attention: nn.Module) -> int:
        return attention.head_size

    def projections(self, attention: nn.Module) -> dict[str, nn.Linear]:
        return {"query_key_value": attention.query_key_value, "dense": attention.dense}

    def output_projection(self, attention: nn.Module) -> nn.Linear:
        return attention.dense

    def num_query_heads(self, attention: nn.Module) -> int:
        return attention.query_key_value.out_features // (3 * attention.head_size)

    def num_kv_heads(self, attention: nn.Module) -> int:
        return self.num_query_heads(attention)

    def keep_heads(self, attention: nn.Module, query_index: Sequence[int], kv_index: Sequence[int]) -> None:
        if list(query_index) != list(kv_index):
            raise ValueError("GPT-NeoX is multi-head attention: query and KV heads are removed together")
        dim = attention.head_size
        attention.query_key_value = select_linear_rows_or_columns(
            attention.query_key_value, head_rows(query_index, 3 * dim), 0)
        attention.dense = select_linear_rows_or_columns(attention.dense, head_rows(query_index, dim), 1)


ADAPTERS: dict[str, ArchitectureAdapter] = {"llama": LlamaAdapter(), "gpt_neox": GPTNeoXAdapter()}


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for a causal LM, chosen from ``config.model_type`` (``llama``, ``gpt_neox`` and variants)."""
    model_type = getattr(model.config, "model_type", "")
    for key, adapter in ADAPTERS.items():
        if model_type == key or model_type.startswith(key + "_"):
            return adapter
    if hasattr(model, "gpt_neox"):
        return ADAPTERS["gpt_neox"]
    if hasattr(model, "model") and hasattr(model.model, "layers") and hasattr(model.model.layers[0], "self_attn"):
        return ADAPTERS["llama"]
    raise ValueError(f"unsupported architecture {model_type!r}; supported: {sorted(ADAPTERS)}")

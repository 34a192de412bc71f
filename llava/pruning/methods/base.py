"""The interface between the pruning engine and a method, and the registration of methods by name.

A method is a small dataclass whose fields are its parameters (kvpress's press style):

* ``schedule(span)``: where it prunes, ``[(layer, keep), ...]``;
* ``select(step, keep)``: which live span tokens to keep at one boundary (a ``TokenSelection``), or, in
  the engine's soft mode, how strongly to keep each one (a ``SoftSelection``);
* ``for_budget(target_tokens, num_layers, span, params)``: a ready instance that costs ``target_tokens``
  equivalent tokens (the one budget API).

Most methods are a score: ``ScorerMethod`` (``llava.pruning.methods.scorer``) prunes once and keeps the
best-scored tokens, so such a method writes only ``score(step)``. Staged and pre-LLM methods write ``select``.
A method's own cases stay in its class, as hooks the generic code calls: ``use_fast_v`` (the legacy switch
that means it), ``params_for_model`` (parameters it takes from the model folder being loaded).

``from_params`` is the one generic constructor: unknown keys are an error listing the valid ones.
``@register_method`` makes a class available by its ``name`` to the registry (``llava.pruning.registry``).
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from llava.pruning.budget import flops_matched_keep
from llava.pruning.selection import SoftSelection, TokenSelection
from toolkit_common.typed_values import typed_field_value

AttentionFn = Callable[[int, torch.Tensor], torch.Tensor]
MethodT = TypeVar("MethodT", bound="PruningMethod")
ValueT = TypeVar("ValueT")

REGISTERED_METHODS: dict[str, type[PruningMethod]] = {}
ORIGINAL_POSITIONS, RENUMBERED_POSITIONS = "original", "renumbered"
POSITIONS = (ORIGINAL_POSITIONS, RENUMBERED_POSITIONS)


def register_method(cls: type[MethodT]) -> type[MethodT]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in REGISTERED_METHODS:
        raise ValueError(f"pruning method {cls.name!r} registered twice")
    REGISTERED_METHODS[cls.name] = cls
    return cls


@dataclass
class PruneStep:
    """What the engine hands a method at one pruning boundary, during prefill.

    Attributes:
        layer: index of the decoder layer about to run on the shorter sequence.
        stage: 0 for the first boundary of the method, 1 for the next, ...
        span_index: ``[B, S]`` index in the current (possibly already compacted) sequence of each live
            span token, ascending.
        span_valid: ``[B, S]`` bool, False for span slots kept only to keep the batch rectangular (a
            sample that kept fewer tokens than another); they are invisible to attention.
        query_index: ``[B]`` current index of the selection query (the last prompt token).
        hidden_states: ``[B, N, d]`` hidden states entering ``layer``.
        attention: ``attention(layer, query_index [B, Q]) -> [B, H, Q, N]`` probabilities of those
            query rows at ``layer`` (``layer - 1`` or ``layer``), from q.k, never the N x N map (soft
            mode: with the keys weighted by the current keep probabilities).
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
    span_valid: torch.Tensor
    query_index: torch.Tensor
    hidden_states: torch.Tensor
    attention: AttentionFn
    original_index: torch.Tensor
    original_span: torch.Tensor
    input_embeddings: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]
    _cache: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False)

    def cached(self, key: Hashable, compute: Callable[[], ValueT]) -> ValueT:
        """``compute()``, run once per step for ``key``: what two hooks of a method share (a score method's
        ``score`` and ``score_metadata``) is computed once."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def query_attention_over_span(self, layer: int) -> torch.Tensor:
        """Attention of the selection query over the live span tokens at ``layer``, ``[B, H, S]`` (computed
        once per step and layer)."""

        def compute() -> torch.Tensor:
            probs = self.attention(layer, self.query_index[:, None])[:, :, 0]  # [B, H, N]
            index = self.span_index[:, None, :].expand(-1, probs.shape[1], -1)
            return probs.gather(-1, index)

        return self.cached(("query_attention_over_span", layer), compute)


@dataclass
class PruningMethod(ABC):
    """A pruning method: where it prunes, how many tokens it keeps, and which ones.

    Subclasses are dataclasses registered with ``@register_method``; their ``init`` fields are the
    parameters (what ``from_params`` accepts and ``params()`` returns).
    """

    name: ClassVar[str]
    pre_llm: ClassVar[bool] = False  # chooses visual tokens before the LLM (``select_visual``)
    use_fast_v: ClassVar[bool] = False  # what the legacy ``use_fast_v`` switch turns on (one method: FastV)

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)

    @classmethod
    def params_for_model(
        cls, params: Mapping[str, Any], model_path: str | None, visual_token_num: float | None
    ) -> dict[str, Any]:
        """``params`` completed from the model the loader is reading (``model_path``, for a
        ``visual_token_num`` budget); by default unchanged (``learned`` takes the pruner the model folder ships)."""
        return dict(params)

    @classmethod
    def from_params(cls: type[MethodT], params: Mapping[str, Any] | None = None) -> MethodT:
        """The method with these parameters (the rest at their defaults); unknown keys are an error."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.parameter_names()))
        if unknown:
            valid = ", ".join(cls.parameter_names()) or "none"
            raise ValueError(f"{cls.name}: unknown parameters {unknown}; valid parameters: {valid}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: typed_param(cls.name, name, value, hints[name]) for name, value in params.items()})

    def params(self) -> dict[str, Any]:
        """The parameters as JSON-friendly values (tuples as lists), for configs and result records."""
        return {name: _plain(getattr(self, name)) for name in self.parameter_names()}

    def keeps_original_positions(self) -> bool:
        """True (default, as FastV's code): kept tokens keep their original RoPE positions. False: after each
        stage the shorter prompt is renumbered contiguously (official PDrop / SparseVLM v1.5); a method with
        a ``positions`` parameter (``POSITIONS``) says which."""
        positions = getattr(self, "positions", ORIGINAL_POSITIONS)
        if positions not in POSITIONS:
            raise ValueError(f"{self.name}: unknown positions {positions!r}; valid: {', '.join(POSITIONS)}")
        return positions == ORIGINAL_POSITIONS

    @abstractmethod
    def schedule(self, span: int) -> list[tuple[int, int]]:
        """``[(layer, keep), ...]``: before each ``layer`` the span shrinks to ``keep`` tokens."""

    @abstractmethod
    def select(self, step: PruneStep, keep: int) -> TokenSelection | SoftSelection:
        """Choose ``keep`` of the live span tokens; indices into ``step.span_index`` columns, ascending."""

    @classmethod
    @abstractmethod
    def for_budget(
        cls: type[MethodT], target_tokens: float, num_layers: int, span: int, params: Mapping[str, Any] | None = None
    ) -> MethodT:
        """The method (other parameters from ``params``) whose schedule costs ``target_tokens`` equivalent tokens."""

    def validate(
        self, num_layers: int, span: int | None, num_heads: int | None = None, hidden_size: int | None = None
    ) -> None:
        """Raise ``ValueError`` for parameters that cannot work with this model (``span``, ``num_heads``,
        ``hidden_size`` may be unknown); the builder and the engine call it before the first layer runs."""
        stages = self.schedule(span if span is not None else 10**9)
        for layer, keep in stages:
            if not 0 < layer < num_layers:
                raise ValueError(
                    f"{self.name}: pruning layer {layer} must lie in [1, {num_layers - 1}] for a model with "
                    f"{num_layers} layers"
                )
            if keep is None or keep <= 0:
                raise ValueError(
                    f"{self.name}: tokens to keep must be >= 1 (set keep / fast_v_attention_rank or a "
                    f"visual_token_num budget), got {keep}"
                )
        if span is not None:
            for _, keep in stages:
                if keep > span:
                    raise ValueError(
                        f"{self.name}: cannot keep {keep} tokens of a span of {span}; valid range is [1, {span}]"
                    )


@dataclass
class SinglePruneMethod(PruningMethod):
    """A method that prunes once, before layer ``agg_layer`` (K), to ``keep`` (R) span tokens."""

    agg_layer: int = 2
    keep: int | None = None

    def schedule(self, span: int) -> list[tuple[int, int]]:
        return [(self.agg_layer, self.keep)]

    @classmethod
    def for_budget(
        cls: type[MethodT], target_tokens: float, num_layers: int, span: int, params: Mapping[str, Any] | None = None
    ) -> MethodT:
        """The FLOPs-matched ``keep = (L*T - K*S) / (L - K)`` at this method's ``agg_layer``."""
        params = without_budget_fields(cls, params, ("keep",))
        agg_layer = params.get("agg_layer", cls.agg_layer)
        return cls.from_params({**params, "keep": flops_matched_keep(target_tokens, num_layers, agg_layer, span)})


def without_budget_fields(cls: type[PruningMethod], params: Mapping[str, Any] | None, names: tuple[str, ...]) -> dict:
    """``params`` without the fields a budget sets; giving one of them beside a budget is an error."""
    params = dict(params or {})
    clash = sorted(set(params) & set(names))
    if clash:
        raise ValueError(
            f"{cls.name}: {clash} and a visual_token_num budget both set the tokens kept: give one of them"
        )
    return params


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


def typed_param(method: str, name: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against the parameter's type ``annotation`` (``toolkit_common.typed_values``: int, float,
    bool, str, tuples of them, ``X | None``; a whole float given for an int read as that int); a ``ValueError``
    naming the method, the parameter, the value and the expected type otherwise (``keep=10.5``, ``seed='abc'``)."""
    return typed_field_value(f"{method}: parameter {name}", value, annotation)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value

"""Token budgets and theoretical FLOPs of in-LLM pruning.

FLOPs of one decoder layer over ``n`` tokens, hidden size ``d``, MLP width ``m``:

* ``fastv`` convention (FastV paper):   ``4 n d^2 + 2 n^2 d + 2 n d m``
* ``swiglu`` convention (gate, up, down projections): ``4 n d^2 + 2 n^2 d + 3 n d m``

"Equivalent tokens" of a pruning schedule = mean over layers of the span tokens each layer processes.
A single prune at layer K of L layers that should equal T equivalent tokens keeps
``R = (L * T - K * S) / (L - K)`` of the ``S`` span tokens (rounded to the nearest integer): for
LLaVA-1.5-7B (L=32, S=576), K=2 gives 166 / 98 / 30 for T = 192 / 128 / 64.

A geometric multi-stage schedule (PyramidDrop's, and the learned pruner's) keeps ``round(S * lambda^s)``
span tokens after stage ``s`` (1-based); for a budget ``T`` the ``lambda`` is found by bisection: with
layers ``[2, 8, 16, 24]`` of LLaVA-1.5-7B it is 0.581 / 0.437 / 0.196 for T = 192 / 128 / 64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

FLOPS_CONVENTIONS = ("fastv", "swiglu")


def budget_problem(visual_token_num: float | None, retain_ratio: float | None) -> str | None:
    """Why the two ways of giving a budget cannot be read together (one line), or None."""
    if visual_token_num is not None and retain_ratio is not None:
        return "give the budget once: visual_token_num (tokens) or retain_ratio (share of the image's tokens)"
    if retain_ratio is not None and not 0 < retain_ratio <= 1:
        return f"retain_ratio must lie in (0, 1], got {retain_ratio}"
    return None


def budget_tokens(visual_token_num: float | None, retain_ratio: float | None, span: int | None) -> float | None:
    """The equivalent tokens a budget asks for: ``visual_token_num`` as given, or ``retain_ratio x span`` (the
    share of this image's tokens, for families whose token count varies with the image); None without a budget."""
    if problem := budget_problem(visual_token_num, retain_ratio):
        raise ValueError(problem)
    if retain_ratio is None:
        return visual_token_num
    if span is None:
        raise ValueError("a retain_ratio budget needs the image's token count (the span length)")
    return retain_ratio * span


def layer_flops(n_tokens: int, hidden: int, mlp: int, convention: str = "fastv") -> int:
    """FLOPs of one decoder layer over ``n_tokens`` tokens (see module docstring)."""
    if convention not in FLOPS_CONVENTIONS:
        raise ValueError(f"unknown FLOPs convention {convention!r}; valid: {', '.join(FLOPS_CONVENTIONS)}")
    mlp_factor = 2 if convention == "fastv" else 3
    return 4 * n_tokens * hidden**2 + 2 * n_tokens**2 * hidden + mlp_factor * n_tokens * hidden * mlp


def span_tokens_per_layer(num_layers: int, span: int, stages: Sequence[tuple[int, int]]) -> list[int]:
    """Span tokens each layer processes when, before each ``layer`` of ``stages``, the span shrinks to ``keep``.

    ``stages`` is a list of ``(layer, keep)`` with increasing layers, e.g. FastV ``[(2, 144)]``.
    """
    per_layer = [span] * num_layers
    for layer, keep in stages:
        if not 0 <= layer < num_layers:
            raise ValueError(f"pruning layer {layer} outside [0, {num_layers - 1}]")
        for i in range(layer, num_layers):
            per_layer[i] = keep
    return per_layer


def equivalent_tokens(span_per_layer: Sequence[int]) -> float:
    """Mean over layers of span tokens processed."""
    return sum(span_per_layer) / len(span_per_layer)


def prefill_flops(
    span_per_layer: Sequence[int], other_tokens: int, hidden: int, mlp: int, convention: str = "fastv"
) -> int:
    """Prefill FLOPs of the decoder given the span tokens per layer and the non-span token count."""
    return sum(layer_flops(n + other_tokens, hidden, mlp, convention) for n in span_per_layer)


def flops_matched_keep(target_tokens: float, num_layers: int, prune_layer: int, span: int = 576) -> int:
    """Tokens kept at ``prune_layer`` so that the schedule equals ``target_tokens`` equivalent tokens.

    ``R = (L * T - K * S) / (L - K)``, rounded to the nearest integer.
    """
    if not 0 < prune_layer < num_layers:
        raise ValueError(f"prune layer K={prune_layer} must lie in [1, {num_layers - 1}] for {num_layers} layers")
    if not 0 < target_tokens <= span:
        raise ValueError(f"target of {target_tokens} equivalent tokens must lie in (0, {span}]")
    keep = round((num_layers * target_tokens - prune_layer * span) / (num_layers - prune_layer))
    if keep < 1:
        lowest = prune_layer * span / num_layers
        raise ValueError(
            f"{target_tokens} equivalent tokens are unreachable with a single prune at layer {prune_layer} of "
            f"{num_layers}: the first {prune_layer} layers alone already cost {lowest:.1f}; lower K or raise the target"
        )
    return keep


def bisect_for_target(cost: Callable[[float], float], target: float, low: float, high: float) -> float:
    """``x`` in ``[low, high]`` whose ``cost(x)`` is closest to ``target``, for a non-decreasing ``cost``.

    60 bisection steps, then the closer of the two bracket ends (rounded schedules make ``cost`` a step
    function, so an exact hit may not exist).
    """
    for _ in range(60):
        middle = (low + high) / 2
        if cost(middle) < target:
            low = middle
        else:
            high = middle
    return min((low, high), key=lambda x: abs(cost(x) - target))


def check_budget_reachable(method: str, target_tokens: float, num_layers: int, span: int, first_layer: int) -> None:
    """A schedule whose first prune is before ``first_layer`` costs more than ``first_layer * span / L``."""
    lowest = first_layer * span / num_layers
    if not lowest < target_tokens <= span:
        raise ValueError(
            f"{method}: {target_tokens} equivalent tokens are out of reach when the first prune is before layer "
            f"{first_layer} of {num_layers}: valid range is ({lowest:.1f}, {span}]"
        )


def geometric_ratios(decay: float, stages: int) -> tuple[float, ...]:
    """``(lambda, lambda^2, ..., lambda^stages)``."""
    return tuple(decay ** (s + 1) for s in range(stages))


COUNT_ROUNDINGS = ("round", "floor")


def stage_keeps(span: int, ratios: Sequence[float], rounding: str = "round") -> list[int]:
    """Tokens kept after each stage: ``round(span * ratio)`` or ``int(span * ratio)`` (``rounding="floor"``,
    official PDrop), at least 1."""
    if rounding not in COUNT_ROUNDINGS:
        raise ValueError(f"unknown count rounding {rounding!r}; valid: {', '.join(COUNT_ROUNDINGS)}")
    count = round if rounding == "round" else int
    return [max(1, count(span * ratio)) for ratio in ratios]


def geometric_decay_for_budget(
    method: str, target_tokens: float, num_layers: int, span: int, layers: Sequence[int], rounding: str = "round"
) -> float:
    """``lambda`` in (0, 1] whose geometric schedule over ``layers`` (counts by ``rounding``) costs closest to
    ``target_tokens``."""
    check_budget_reachable(method, target_tokens, num_layers, span, layers[0])

    def cost(decay: float) -> float:
        keeps = stage_keeps(span, geometric_ratios(decay, len(layers)), rounding)
        return equivalent_tokens(span_tokens_per_layer(num_layers, span, list(zip(layers, keeps, strict=True))))

    return bisect_for_target(cost, target_tokens, 0.0, 1.0)


def geometric_keeps_for_budget(method: str, target_tokens: float, num_layers: int, span: int, layers: Sequence[int]) -> list[int]:
    """Tokens kept after each of ``layers`` by the geometric schedule that costs ``target_tokens``."""
    decay = geometric_decay_for_budget(method, target_tokens, num_layers, span, layers)
    return stage_keeps(span, geometric_ratios(decay, len(layers)))

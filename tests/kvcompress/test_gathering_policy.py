"""SnapKV on the gathering KV groups, composed with windowed positional groups and removed dead heads
(``positional+dead+snapkv_gathering``, :mod:`kvcompress.methods.gathering`)."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kvcompress.adapters import ModelShape, adapter_for
from kvcompress.attention_math import snapkv_keep_indices
from kvcompress.cache import kv_cache_bytes
from kvcompress.classification import HeadClassification
from kvcompress.layout import SnapKVPolicy, WindowKV
from kvcompress.methods.base import ComposedMethod
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.gathering import GatheringSnapKV, gathering_kv_groups
from kvcompress.methods.positional import PositionalHeadOptimizer
from kvcompress.methods.registry import MethodSettings, build_method, kv_fraction
from tests.kvcompress.test_windowed import cached_greedy
from toolkit_common.transformers_compat import cache_kwargs

WINDOWED = [(0, 0), (1, 1), (2, 0), (3, 1)]
DEAD = [(0, 1), (2, 3), (3, 0)]
SINKS, WINDOW, OBSERVATION = 2, 8, 4
METHOD = "positional+dead+snapkv_gathering"


def classification_for(model) -> HeadClassification:
    """Dead heads ``DEAD``; the query heads of the KV groups ``WINDOWED`` positional, every other head gathering
    (on the tiny Llama a gathering group holds a dead head in layers 2 and 3; on GPT-NeoX, one head per KV
    group, the group of a dead head is removed)."""
    shape = adapter_for(model).model_shape(model)
    group = shape.num_query_heads // shape.num_kv_heads
    labels = [["dead" if (layer, head) in DEAD else "positional" if (layer, head // group) in WINDOWED
               else "gathering" for head in range(shape.num_query_heads)] for layer in range(shape.num_layers)]
    return HeadClassification(shape, labels, "test")


def settings(classification: HeadClassification, length: int, gathering_fraction: float,
             window: int = WINDOW) -> MethodSettings:
    return MethodSettings(classification, SINKS, window, length, snapkv_observation_window=OBSERVATION,
                          gathering_fraction=gathering_fraction)


REFERENCE = "kvcompress_test_gathering_reference"
REFERENCE_ATTRIBUTE = "reference_gathering_policy"


def masked_reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention without cache on the zero-mode model (every head present), one dense ``[B, H, N, N]`` mask:
    causal; sinks + window for the query heads of windowed KV heads; for those of gathering KV heads every key
    in the prompt (``N <= T``), and from row ``T`` on only the prompt keys kept per batch row and KV head plus
    every later key. The first call (the prompt alone) picks the kept keys from its own live queries' last
    ``w`` rows with the baseline's SnapKV selection and stores them in the module's reference state."""
    state = getattr(module, REFERENCE_ATTRIBUTE)
    policy, snap, prompt = state["window"], state["snap"], state["prompt_length"]
    batch, heads, length, _ = query.shape
    group = heads // key.shape[1]
    scaling = scaling or query.shape[-1] ** -0.5
    if state["kept"] is None:
        assert length == prompt
        state["kept"] = {}
        for kv in state["gathering"]:
            live = [head for head in range(kv * group, (kv + 1) * group) if head not in state["dead"]]
            index = snapkv_keep_indices(query[:, live, -snap.observation_window:], key[:, [kv] * len(live)],
                                        torch.zeros(len(live), dtype=torch.long), 1, scaling, snap.budget,
                                        snap.pool_kernel)
            state["kept"][kv] = torch.zeros(batch, length, dtype=torch.bool).scatter_(1, index[:, 0], True)
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    causal = (j <= i).expand(batch, length, length)
    masks = []
    for head in range(heads):
        kv = head // group
        if kv in state["windowed"]:
            masks.append(causal & ((j < policy.sinks) | (i - j < policy.window)))
        elif kv in state["gathering"]:
            kept = torch.cat([state["kept"][kv], torch.ones(batch, length - prompt, dtype=torch.bool)], 1)
            masks.append(causal & ((i < prompt) | kept[:, None, :]))
        else:
            masks.append(causal)
    mask = torch.stack(masks, 1)
    key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    scores = (query @ key.transpose(-1, -2)) * scaling
    output = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ value
    return output.transpose(1, 2).contiguous(), None


def reference_greedy(model, classification, input_ids, steps, snap):
    """Greedy tokens and last-position logits of each step, re-running the whole sequence without cache
    (dead heads zeroed, the masks of :func:`masked_reference_attention`); also the kept prompt positions per
    ``(layer, kv_head)`` ``[B, budget]``."""
    AttentionInterface.register(REFERENCE, masked_reference_attention)
    AttentionMaskInterface.register(REFERENCE, sdpa_mask)
    attentions = adapter_for(model).attention_modules(model)
    windowed, gathering = classification.windowable_kv_groups(), gathering_kv_groups(classification)
    for layer, attention in enumerate(attentions):
        setattr(attention, REFERENCE_ATTRIBUTE, {
            "window": WindowKV(SINKS, WINDOW), "snap": snap, "prompt_length": input_ids.shape[1], "kept": None,
            "windowed": {kv for group_layer, kv in windowed if group_layer == layer},
            "gathering": {kv for group_layer, kv in gathering if group_layer == layer},
            "dead": {head for dead_layer, head in classification.heads_labelled("dead") if dead_layer == layer},
        })
    previous = model.config._attn_implementation
    model.set_attn_implementation(REFERENCE)
    try:
        with DeadHeadPruner(classification.heads_labelled("dead"), mode="zero").apply(model):
            ids, logits = input_ids, []
            for _ in range(steps):
                logits.append(model(ids, use_cache=False).logits[:, -1])
                ids = torch.cat([ids, logits[-1].argmax(-1, keepdim=True)], 1)
        kept = {(layer, kv): getattr(attentions[layer], REFERENCE_ATTRIBUTE)["kept"][kv] for layer, kv in gathering}
    finally:
        model.set_attn_implementation(previous)
        for attention in attentions:
            delattr(attention, REFERENCE_ATTRIBUTE)
    return ids[:, input_ids.shape[1]:], torch.stack(logits, 1), kept


def cache_kept_positions(cache, budget: int) -> dict[tuple[int, int], torch.Tensor]:
    """The first ``budget`` positions each SnapKV KV head of ``cache`` holds (the prompt positions it kept), as a
    ``[B, T_max]`` boolean per original ``(layer, kv_head)``."""
    kept = {}
    for layer, cache_layer in enumerate(cache.layers):
        layout = cache_layer.layout
        for group in cache_layer.groups:
            if isinstance(group.policy, SnapKVPolicy):
                for local, index in enumerate(group.kv_index.tolist()):
                    positions = group.positions[:, local, :budget]
                    mask = torch.zeros(positions.shape[0], int(positions.max()) + 1, dtype=torch.bool)
                    kept[(layer, layout.kv_heads[index])] = mask.scatter_(1, positions, True)
    return kept


def test_cache_equals_an_eager_masked_reference(tiny_model, input_ids):
    """Windowed rings + SnapKV stores on the gathering groups + structurally removed dead heads, prefill then 8
    decode steps, give the logits of a dense-masked eager attention of the same per-group policy (and keep the
    same prompt positions per KV group); the eviction changes the logits compared with ``positional+dead``."""
    classification = classification_for(tiny_model)
    length, steps = input_ids.shape[1], 8
    method_settings = settings(classification, length, 0.4)
    budget = method_settings.gathering_budget_tokens()
    assert budget == 16
    with torch.no_grad():
        with build_method(METHOD, method_settings).apply(tiny_model) as handle:
            cache = handle.new_cache()
            tokens, logits = cached_greedy(tiny_model, cache, input_ids, steps)
            kept = cache_kept_positions(cache, budget)
        with build_method("positional+dead", method_settings).apply(tiny_model) as handle:
            _, unevicted = cached_greedy(tiny_model, handle.new_cache(), input_ids, steps)
        reference_tokens, reference_logits, reference_kept = reference_greedy(
            tiny_model, classification, input_ids, steps, SnapKVPolicy(budget, OBSERVATION))
    assert kept.keys() == reference_kept.keys() and kept
    for group, mask in kept.items():
        assert torch.equal(mask, reference_kept[group][:, : mask.shape[1]]), group
        assert (mask.sum(1) == budget).all()
    assert torch.equal(tokens, reference_tokens)
    torch.testing.assert_close(logits, reference_logits, rtol=0, atol=1e-4)
    assert not torch.allclose(logits, unevicted, atol=1e-3)


def test_kv_bytes_after_prefill_match_kv_fraction(tiny_model, input_ids):
    """After a prefill of ``T`` tokens the cache holds exactly ``kv_fraction(..., gathering_budget)`` of the full
    model's KV: ``sinks + window`` per windowed group, ``budget`` per gathering group, none for removed ones."""
    classification = classification_for(tiny_model)
    length = input_ids.shape[1]
    method_settings = settings(classification, length, 0.4)
    with torch.no_grad():
        full = kv_cache_bytes(tiny_model(input_ids, use_cache=True).past_key_values)
        with build_method(METHOD, method_settings).apply(tiny_model) as handle:
            cache = handle.new_cache()
            tiny_model(input_ids, use_cache=True, **cache_kwargs(cache))
    fraction = kv_fraction(classification, length, SINKS, WINDOW,
                           gathering_budget=method_settings.gathering_budget_tokens())
    assert kv_cache_bytes(cache) == round(fraction * full)
    assert fraction < kv_fraction(classification, length, SINKS, WINDOW)


@pytest.mark.parametrize("fraction", [1.0, 1.5])
def test_full_gathering_budget_is_positional_plus_dead(tiny_model, input_ids, fraction):
    """With the gathering budget at 100 % of the context (or more) nothing is evicted: the same logits, bit for
    bit, as ``positional+dead``, prefill and decode."""
    classification = classification_for(tiny_model)
    method_settings = settings(classification, input_ids.shape[1], fraction)
    with torch.no_grad():
        with build_method("positional+dead", method_settings).apply(tiny_model) as handle:
            reference_tokens, reference_logits = cached_greedy(tiny_model, handle.new_cache(), input_ids, 6)
        with build_method(METHOD, method_settings).apply(tiny_model) as handle:
            tokens, logits = cached_greedy(tiny_model, handle.new_cache(), input_ids, 6)
    assert torch.equal(tokens, reference_tokens)
    assert torch.equal(logits, reference_logits)


def test_window_and_budget_at_least_length_is_the_full_model(tiny_model, input_ids):
    """Window >= sequence length and gathering budget >= prompt length (no dead heads): the full model."""
    length, steps = input_ids.shape[1], 6
    shape = adapter_for(tiny_model).model_shape(tiny_model)
    gathering = [(layer, kv) for layer in range(shape.num_layers) for kv in range(shape.num_kv_heads)
                 if (layer, kv) not in WINDOWED]
    method = ComposedMethod([PositionalHeadOptimizer(WINDOWED, SINKS, length + steps),
                             GatheringSnapKV(gathering, length, OBSERVATION)])
    with torch.no_grad():
        full_tokens, full_logits = cached_greedy(tiny_model, DynamicCache(), input_ids, steps)
        full_forward = tiny_model(input_ids).logits
        with method.apply(tiny_model) as handle:
            tokens, logits = cached_greedy(tiny_model, handle.new_cache(), input_ids, steps)
            no_cache = tiny_model(input_ids, use_cache=False).logits
    assert torch.equal(tokens, full_tokens)
    torch.testing.assert_close(logits, full_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(no_cache, full_forward, rtol=0, atol=1e-5)


def test_gathering_groups_of_a_classification():
    """The groups with a gathering head: neither windowable nor removable; the method validates its ids."""
    shape = ModelShape(num_layers=1, num_query_heads=6, num_kv_heads=3, head_dim=8)
    labels = [["positional", "dead", "gathering", "positional", "dead", "dead"]]
    classification = HeadClassification(shape, labels, "test")
    assert gathering_kv_groups(classification) == [(0, 1)]
    assert classification.windowable_kv_groups() == [(0, 0)]
    assert GatheringSnapKV(classification, 8, observation_window=4).kv_groups == [(0, 1)]
    with pytest.raises(ValueError):
        SnapKVPolicy(4, 8)

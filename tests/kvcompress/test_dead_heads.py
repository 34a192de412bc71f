"""DeadHeadPruner: structural removal == zeroing (logits within 1e-5), undo, KV and weights shrink."""

import pytest
import torch

from kvcompress.adapters import adapter_for
from kvcompress.cache import group_heads, kv_cache_bytes
from kvcompress.layout import get_layout
from kvcompress.methods.dead_heads import DeadHeadPruner
from toolkit_common.transformers_compat import cache_kwargs

# Llama fixture: 6 query heads, 2 KV heads (0-2 -> KV 0, 3-5 -> KV 1); layer 1 loses a whole KV group.
HEADS = [(0, 1), (0, 4), (1, 3), (1, 4), (1, 5), (3, 0)]


def test_structural_equals_zeroing(tiny_model, input_ids):
    with torch.no_grad():
        full = tiny_model(input_ids).logits
        with DeadHeadPruner(HEADS, mode="zero").apply(tiny_model):
            zeroed = tiny_model(input_ids).logits
        with DeadHeadPruner(HEADS, mode="structural").apply(tiny_model):
            removed = tiny_model(input_ids).logits
        restored = tiny_model(input_ids).logits
    assert (zeroed - full).abs().max() > 1e-3  # the heads mattered
    torch.testing.assert_close(removed, zeroed, rtol=0, atol=1e-5)
    torch.testing.assert_close(restored, full, rtol=0, atol=0)


def test_structural_removal_slices_weights_and_cache(tiny_model, input_ids):
    adapter = adapter_for(tiny_model)
    attention = adapter.attention_modules(tiny_model)[1]
    params_before = sum(p.numel() for p in tiny_model.parameters())
    with torch.no_grad():
        base_cache = tiny_model(input_ids, use_cache=True).past_key_values
        with DeadHeadPruner(HEADS).apply(tiny_model) as handle:
            assert adapter.num_query_heads(attention) == adapter.model_shape(tiny_model).num_query_heads - 3
            assert sum(p.numel() for p in tiny_model.parameters()) < params_before
            cache = handle.new_cache()
            tiny_model(input_ids, past_key_values=cache, use_cache=True)
            generated = tiny_model.generate(input_ids[:1], max_new_tokens=3, min_new_tokens=3, do_sample=False,
                                            **cache_kwargs(handle.new_cache()))
        assert generated.shape[1] == input_ids.shape[1] + 3
    assert kv_cache_bytes(cache) < kv_cache_bytes(base_cache)
    assert sum(p.numel() for p in tiny_model.parameters()) == params_before


def test_structural_with_cache_matches_no_cache(tiny_model, input_ids):
    with torch.no_grad(), DeadHeadPruner(HEADS).apply(tiny_model) as handle:
        no_cache = tiny_model(input_ids, use_cache=False).logits
        cache = handle.new_cache()
        first = tiny_model(input_ids[:, :30], past_key_values=cache, use_cache=True).logits
        rest = tiny_model(input_ids[:, 30:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first, rest], 1), no_cache, rtol=0, atol=1e-5)


def test_removal_leaves_unequal_gqa_runs_where_a_group_loses_some_heads(tiny_model):
    """Llama: layer 0 keeps 2 + 2 query heads per KV head (one GQA SDPA call), layer 3 keeps 2 + 3 (one call
    per KV head); GPT-NeoX has one KV head per query head. Logits of both paths are checked above."""
    adapter = adapter_for(tiny_model)
    shape = adapter.model_shape(tiny_model)
    grouped = shape.num_kv_heads < shape.num_query_heads
    with DeadHeadPruner(HEADS).apply(tiny_model):
        attentions = adapter.attention_modules(tiny_model)
        runs = {layer: [g.contiguous_runs for g in group_heads(get_layout(attentions[layer], adapter))]
                for layer in (0, 2, 3)}
    assert runs == {0: [True], 2: [True], 3: [not grouped]}


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown mode"):
        DeadHeadPruner([(0, 0)], mode="prune-ish")

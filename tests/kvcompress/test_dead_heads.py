"""DeadHeadPruner: structural removal == zeroing (logits within 1e-5), undo, KV and weights shrink."""

import pytest
import torch

from kvcompress.adapters import adapter_for
from kvcompress.cache import attention_calls, group_heads, kv_cache_bytes
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
    per run length); GPT-NeoX has one KV head per query head (one call). Logits of both paths are checked above."""
    adapter = adapter_for(tiny_model)
    shape = adapter.model_shape(tiny_model)
    grouped = shape.num_kv_heads < shape.num_query_heads
    with DeadHeadPruner(HEADS).apply(tiny_model):
        attentions = adapter.attention_modules(tiny_model)
        calls = {layer: [len(g.calls) for g in group_heads(get_layout(attentions[layer], adapter))]
                 for layer in (0, 2, 3)}
    assert calls == {0: [1], 2: [1], 3: [2 if grouped else 1]}


@pytest.mark.parametrize(("query_index", "query_to_kv", "expected"), [
    ([0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 1, 1, 1, 2, 2, 2], [(0, 9, 0, 3)]),  # the model's layout: one call
    ([0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 1, 1, 1, 2, 2], [(0, 6, 0, 2), (6, 8, 2, 3)]),  # runs 3, 3, 2
    ([0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 1, 1, 2, 2, 2], [(0, 3, 0, 1), (3, 5, 1, 2), (5, 8, 2, 3)]),  # 3, 2, 3
    ([0, 1, 2, 6, 7, 8], [0, 0, 0, 1, 1, 1], [(0, 3, 0, 1), (6, 9, 1, 2)]),  # a full group around a windowed one
    ([0, 1, 2, 3], [0, 1, 2, 3], [(0, 4, 0, 4)]),  # multi-head attention
    ([0, 1, 2, 3], [1, 1, 0, 0], [(0, 2, 1, 2), (2, 4, 0, 1)]),  # not in KV order: still correct calls
])
def test_attention_calls_cover_every_query_head_with_equal_runs(query_index, query_to_kv, expected):
    calls = attention_calls(query_index, query_to_kv)
    assert [(c.query.start, c.query.stop, c.kv.start, c.kv.stop) for c in calls] == expected
    covered = [position for c in calls for position in range(c.local_query.start, c.local_query.stop)]
    assert covered == list(range(len(query_index)))
    for c in calls:  # enable_gqa: query head h of the call reads KV head kv.start + h // run
        run = (c.local_query.stop - c.local_query.start) // (c.kv.stop - c.kv.start)
        assert [query_to_kv[p] for p in range(c.local_query.start, c.local_query.stop)] == \
            [c.kv.start + h // run for h in range(c.local_query.stop - c.local_query.start)]


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown mode"):
        DeadHeadPruner([(0, 0)], mode="prune-ish")

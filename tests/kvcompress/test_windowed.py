"""Windowed positional heads, StreamingLLM and SnapKV through the kvcompress cache and attention."""

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kvcompress import attention_math
from kvcompress.adapters import adapter_for
from kvcompress.cache import GROWTH_CHUNK, CompressedKVCache, kv_cache_bytes
from kvcompress.evaluation.timing import greedy_generate
from kvcompress.layout import WindowKV
from kvcompress.methods.base import ComposedMethod
from kvcompress.methods.baselines import SnapKV, StreamingLLM
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.positional import PositionalHeadOptimizer
from kvcompress.methods.registry import MethodSettings, build_method
from toolkit_common.transformers_compat import cache_kwargs

GROUPS = [(0, 0), (1, 1), (2, 0), (3, 1)]


@pytest.fixture(params=[None, 7], ids=["one-block", "blocks-of-7"])
def window_chunk(request, monkeypatch):
    """Windowed prefill as one block (the default block is longer than these sequences) or in blocks of 7 rows."""
    if request.param is not None:
        monkeypatch.setattr(attention_math, "WINDOW_CHUNK", request.param)
    return request.param


def run_in_steps(model, handle, ids, splits):
    """Feed ``ids`` through a fresh compressed cache in chunks ending at ``splits``; return logits and cache."""
    cache = handle.new_cache()
    logits, start = [], 0
    for end in [*splits, ids.shape[1]]:
        logits.append(model(ids[:, start:end], past_key_values=cache, use_cache=True).logits)
        start = end
    return torch.cat(logits, 1), cache


def test_window_at_least_sequence_length_is_the_full_model(tiny_model, input_ids):
    with torch.no_grad():
        full = tiny_model(input_ids).logits
        with PositionalHeadOptimizer(GROUPS, sinks=4, window=input_ids.shape[1]).apply(tiny_model) as handle:
            no_cache = tiny_model(input_ids, use_cache=False).logits
            stepped, _ = run_in_steps(tiny_model, handle, input_ids, [17, 30, 31])
            generated = tiny_model.generate(input_ids[:1], max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                            **cache_kwargs(handle.new_cache()))
        reference = tiny_model.generate(input_ids[:1], max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(no_cache, full)
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-5)
    assert torch.equal(generated, reference)


def test_small_window_drops_kv_bytes_exactly(tiny_model, input_ids):
    sinks, window = 2, 8
    shape = adapter_for(tiny_model).model_shape(tiny_model)
    length = input_ids.shape[1]
    with torch.no_grad():
        full_cache = tiny_model(input_ids, use_cache=True).past_key_values
        with PositionalHeadOptimizer(GROUPS, sinks, window).apply(tiny_model) as handle:
            logits, cache = run_in_steps(tiny_model, handle, input_ids, [25])
            no_cache = tiny_model(input_ids, use_cache=False).logits
    per_token_head = 2 * input_ids.shape[0] * shape.head_dim * 4  # K and V, fp32
    full_heads = shape.num_layers * shape.num_kv_heads
    # full groups: the 25-token prefill buffer grew to a GROWTH_CHUNK multiple for the next 15; windowed: the ring
    held_full = -(-length // GROWTH_CHUNK) * GROWTH_CHUNK
    expected = per_token_head * ((full_heads - len(GROUPS)) * held_full + len(GROUPS) * (sinks + window))
    assert kv_cache_bytes(full_cache) == per_token_head * full_heads * length
    assert kv_cache_bytes(cache) == expected
    torch.testing.assert_close(logits, no_cache, rtol=0, atol=1e-5)  # evicted tokens were never needed


def streaming_mask(length: int, sinks: int, window: int) -> torch.Tensor:
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return (j <= i) & ((j < sinks) | (i - j < window))


def test_streaming_llm_matches_a_reference_mask(tiny_model, input_ids, window_chunk):
    """All heads windowed == the plain model with an explicit 4D sink + window mask; decoding agrees."""
    sinks, window = 3, 6
    mask = streaming_mask(input_ids.shape[1], sinks, window)[None, None].expand(input_ids.shape[0], 1, -1, -1)
    with torch.no_grad():
        reference = tiny_model(input_ids, attention_mask=mask, use_cache=False).logits
        with StreamingLLM(sinks, window).apply(tiny_model) as handle:
            windowed = tiny_model(input_ids, use_cache=False).logits
            stepped, cache = run_in_steps(tiny_model, handle, input_ids, list(range(10, 40)))
    torch.testing.assert_close(windowed, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(stepped, reference, rtol=0, atol=1e-5)
    shape = adapter_for(tiny_model).model_shape(tiny_model)
    assert kv_cache_bytes(cache) == 2 * 2 * shape.head_dim * 4 * shape.num_layers * shape.num_kv_heads * (
        sinks + window)


def test_snapkv_keeps_budget_tokens_and_full_prefill(tiny_model, input_ids):
    shape = adapter_for(tiny_model).model_shape(tiny_model)
    with torch.no_grad():
        full = tiny_model(input_ids).logits
        with SnapKV(budget=16, observation_window=4).apply(tiny_model) as handle:
            logits, cache = run_in_steps(tiny_model, handle, input_ids, [36])
            kept = kv_cache_bytes(cache)
            big_budget, _ = run_in_steps(tiny_model, SnapKV(budget=64, observation_window=4).apply(tiny_model),
                                         input_ids, [36])
    torch.testing.assert_close(logits[:, :36], full[:, :36], rtol=0, atol=1e-5)  # prefill is full attention
    assert not torch.allclose(logits[:, 36:], full[:, 36:], atol=1e-4)  # decoding sees the compressed cache
    held = -(-(16 + 4) // GROWTH_CHUNK) * GROWTH_CHUNK  # budget 16 after prefill, + 4 decoded, in a grown buffer
    assert kept == 2 * 2 * shape.head_dim * 4 * shape.num_layers * shape.num_kv_heads * held
    torch.testing.assert_close(big_budget, full, rtol=0, atol=1e-5)


def test_windows_compose_with_dead_heads_and_undo(tiny_model, input_ids):
    with torch.no_grad():
        full = tiny_model(input_ids).logits
        method = ComposedMethod([DeadHeadPruner([(0, 1), (2, 3)]), PositionalHeadOptimizer(GROUPS, 2, 8)])
        with method.apply(tiny_model) as handle:
            no_cache = tiny_model(input_ids, use_cache=False).logits
            stepped, _ = run_in_steps(tiny_model, handle, input_ids, [20])
        after = tiny_model(input_ids).logits
    torch.testing.assert_close(stepped, no_cache, rtol=0, atol=1e-5)
    assert torch.equal(after, full)
    assert tiny_model.config._attn_implementation == "sdpa"


def test_padding_mask_is_respected(tiny_model, window_chunk):
    """Left padding goes through the model mask: real tokens get the unpadded result."""
    torch.manual_seed(3)
    ids = torch.randint(0, 90, (1, 20))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 20, dtype=torch.long)], 1)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad(), PositionalHeadOptimizer(GROUPS, 2, 32).apply(tiny_model) as handle:
        alone = tiny_model(ids, use_cache=False).logits
        cache = handle.new_cache()
        both = tiny_model(padded, attention_mask=mask, position_ids=positions, past_key_values=cache,
                          use_cache=True).logits
    torch.testing.assert_close(both[:, 5:], alone, rtol=0, atol=1e-5)


def test_window_policy_validation():
    with pytest.raises(ValueError, match="window"):
        WindowKV(4, 0)


@pytest.mark.parametrize(("sinks", "window", "length", "splits"), [
    (2, 5, 40, [3, 11, 12, 13, 17, 24, 25, 33]),  # wraps many times
    (4, 70, 160, [40, 63, 64, 65, 66, 90, 120, 121]),  # grows past RING_CHUNK slots before it wraps
])
def test_ring_buffer_with_mixed_chunks_matches_the_reference_mask(tiny_model, sinks, window, length, splits,
                                                                   window_chunk):
    """Chunks of several tokens after the ring wrapped (masked attention over ring + chunk, then the write)
    and single-token steps (ring as it lies, no mask) both give the reference sink + window attention."""
    torch.manual_seed(2)
    input_ids = torch.randint(0, 90, (2, length))
    mask = streaming_mask(length, sinks, window)[None, None].expand(2, 1, -1, -1)
    with torch.no_grad():
        reference = tiny_model(input_ids, attention_mask=mask, use_cache=False).logits
        with StreamingLLM(sinks, window).apply(tiny_model) as handle:
            stepped, cache = run_in_steps(tiny_model, handle, input_ids, splits)
    torch.testing.assert_close(stepped, reference, rtol=0, atol=1e-5)
    for layer in cache.layers:
        (group,) = layer.groups
        assert group.ring[0].shape[2] == sinks + window  # the whole ring, never more
        assert sorted(group.positions[0, 0].tolist()) == [*range(sinks), *range(length - window, length)]


REFERENCE = "kvcompress_test_masked_reference"
REFERENCE_ATTRIBUTE = "reference_windowed_kv_heads"


def masked_reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention without cache, written apart from kvcompress: K/V repeated per query head, one dense
    ``[H, N, N]`` mask, causal for every head and sink + window for the query heads of the KV heads listed in
    the module's ``reference_windowed_kv_heads`` (with the policy it holds)."""
    policy, windowed = getattr(module, REFERENCE_ATTRIBUTE)
    length, group = query.shape[2], query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    causal = j <= i
    sink_window = causal & ((j < policy.sinks) | (i - j < policy.window))
    mask = torch.stack([sink_window if head // group in windowed else causal for head in range(query.shape[1])])
    scores = (query @ key.transpose(-1, -2)) * (scaling or query.shape[-1] ** -0.5)
    output = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ value
    return output.transpose(1, 2).contiguous(), None


def reference_greedy(model, input_ids, steps, policy, groups):
    """Greedy tokens and last-position logits of each step, re-running the whole sequence without cache."""
    AttentionInterface.register(REFERENCE, masked_reference_attention)
    AttentionMaskInterface.register(REFERENCE, sdpa_mask)
    attentions = adapter_for(model).attention_modules(model)
    for layer, attention in enumerate(attentions):
        setattr(attention, REFERENCE_ATTRIBUTE, (policy, {kv for group_layer, kv in groups if group_layer == layer}))
    model.set_attn_implementation(REFERENCE)
    try:
        ids, logits = input_ids, []
        for _ in range(steps):
            logits.append(model(ids, use_cache=False).logits[:, -1])
            ids = torch.cat([ids, logits[-1].argmax(-1, keepdim=True)], 1)
    finally:
        model.set_attn_implementation("sdpa")
        for attention in attentions:
            delattr(attention, REFERENCE_ATTRIBUTE)
    return ids[:, input_ids.shape[1]:], torch.stack(logits, 1)


def cached_greedy(model, cache, input_ids, steps):
    """Greedy tokens and logits of each step on ``cache`` (one prefill, then one token per step)."""
    logits = [model(input_ids, use_cache=True, **cache_kwargs(cache)).logits[:, -1]]
    tokens = [logits[-1].argmax(-1, keepdim=True)]
    for _ in range(steps - 1):
        logits.append(model(tokens[-1], use_cache=True, **cache_kwargs(cache)).logits[:, -1])
        tokens.append(logits[-1].argmax(-1, keepdim=True))
    return torch.cat(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("with_dead", [False, True], ids=["positional", "positional+dead"])
def test_greedy_generation_on_the_ring_cache_equals_an_eager_masked_reference(tiny_model, input_ids, window_chunk,
                                                                               with_dead):
    """Windowed KV groups (ring buffers, blockwise prefill, dead heads removed or not) generate what an eager
    dense-masked attention of the same policy generates without any cache, over 12 steps past the window."""
    policy, steps = WindowKV(2, 8), 12
    heads = [(0, 1), (2, 3), (3, 0)]
    methods = [PositionalHeadOptimizer(GROUPS, policy.sinks, policy.window)]
    with torch.no_grad():
        if with_dead:
            with DeadHeadPruner(heads, mode="zero").apply(tiny_model):
                reference_tokens, reference_logits = reference_greedy(tiny_model, input_ids, steps, policy, GROUPS)
            methods.insert(0, DeadHeadPruner(heads))
        else:
            reference_tokens, reference_logits = reference_greedy(tiny_model, input_ids, steps, policy, GROUPS)
        with ComposedMethod(methods).apply(tiny_model) as handle:
            tokens, logits = cached_greedy(tiny_model, handle.new_cache(), input_ids, steps)
            timed = greedy_generate(tiny_model, input_ids, steps, handle.new_cache())
        full_tokens, _ = cached_greedy(tiny_model, DynamicCache(), input_ids, steps)
    assert torch.equal(tokens, reference_tokens)
    assert torch.equal(timed.new_tokens, reference_tokens)
    torch.testing.assert_close(logits, reference_logits, rtol=0, atol=1e-4)
    assert not torch.equal(full_tokens, reference_tokens)  # the window changed what the model says


def test_full_kvcompress_generates_what_the_stock_model_generates(tiny_model, input_ids):
    """``full_kvcompress``: the unmodified model on our attention and cache, same tokens and logits as stock."""
    with torch.no_grad():
        stock_tokens, stock_logits = cached_greedy(tiny_model, DynamicCache(), input_ids, 8)
        stock_forward = tiny_model(input_ids).logits
        with build_method("full_kvcompress", MethodSettings()).apply(tiny_model) as handle:
            assert tiny_model.config._attn_implementation == "kvcompress"
            cache = handle.new_cache()
            tokens, logits = cached_greedy(tiny_model, cache, input_ids, 8)
            stepped, _ = run_in_steps(tiny_model, handle, input_ids, [17, 30, 31])
            no_cache = tiny_model(input_ids, use_cache=False).logits
    assert isinstance(cache, CompressedKVCache)
    assert torch.equal(tokens, stock_tokens)
    torch.testing.assert_close(logits, stock_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(stepped, stock_forward, rtol=0, atol=1e-5)
    torch.testing.assert_close(no_cache, stock_forward, rtol=0, atol=1e-5)
    assert tiny_model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("method", ["full_kvcompress", "positional", "streaming_llm", "snapkv"])
def test_kv_bytes_are_the_storage_the_cache_holds(tiny_model, input_ids, method):
    """``kv_cache_bytes`` (the tensors' nbytes) is the memory the cache keeps alive: after the prefill, whose
    tensors a one-policy layer adopts without copying, and after decode steps (GPT-NeoX's values are a view
    of the fused qkv output, which the cache must not keep)."""
    settings = MethodSettings(context_length=input_ids.shape[1], kv_fraction=0.5,
                              snapkv_observation_window=4)
    shape = adapter_for(tiny_model).model_shape(tiny_model)
    method = method if method != "positional" else PositionalHeadOptimizer(GROUPS, 2, 8)
    with torch.no_grad(), (build_method(method, settings) if isinstance(method, str) else method).apply(
            tiny_model) as handle:
        cache = handle.new_cache()
        tiny_model(input_ids, use_cache=True, **cache_kwargs(cache))
        held = [kv_cache_bytes(cache)]
        storages = [{id(t.untyped_storage()): t.untyped_storage().nbytes() for layer in cache.layers
                     for group in layer.groups for t in (group.ring or group.store)[:2]}]
        tiny_model(input_ids[:, :1], use_cache=True, **cache_kwargs(cache))
        held.append(kv_cache_bytes(cache))
        storages.append({id(t.untyped_storage()): t.untyped_storage().nbytes() for layer in cache.layers
                         for group in layer.groups for t in (group.ring or group.store)[:2]})
    assert held == [sum(s.values()) for s in storages]
    assert held[0] <= 2 * input_ids.numel() * shape.num_layers * shape.num_kv_heads * shape.head_dim * 4

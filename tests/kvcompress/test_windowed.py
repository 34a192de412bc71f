"""Windowed positional heads, StreamingLLM and SnapKV through the kvcompress cache and attention."""

import pytest
import torch

from kvcompress.adapters import adapter_for
from kvcompress.cache import GROWTH_CHUNK, kv_cache_bytes
from kvcompress.layout import WindowKV
from kvcompress.methods.base import ComposedMethod
from kvcompress.methods.baselines import SnapKV, StreamingLLM
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.positional import PositionalHeadOptimizer
from toolkit_common.transformers_compat import cache_kwargs

GROUPS = [(0, 0), (1, 1), (2, 0), (3, 1)]


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


def test_streaming_llm_matches_a_reference_mask(tiny_model, input_ids):
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


def test_padding_mask_is_respected(tiny_model):
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
def test_ring_buffer_with_mixed_chunks_matches_the_reference_mask(tiny_model, sinks, window, length, splits):
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

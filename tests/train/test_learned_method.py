"""Method ``learned`` through the engine: hard masks remove tokens (shorter KV cache), cache == recompute, errors."""

from types import SimpleNamespace

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.model.tiny import build_tiny_llava
from llava.pruning.methods.learned import LearnedPruning
from llava.train.eval_pruner import run_evaluation
from tests.conftest import assert_cached_generation_equals_recompute, llava_prompt, pixel_values, with_fields
from tests.train.conftest import LAYERS, NUM_LAYERS, write_checkpoint

PREFIX, SUFFIX = 6, 12


@pytest.fixture(scope="module")
def learned_llava(tmp_path_factory):
    """8-layer tiny LLaVA pruned by a random residual pruner at layers 2, 4, 6."""
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("pruner") / "pruner.pt", use_attn_residual=True)
    model = build_tiny_llava(seed=0, text_overrides={"num_hidden_layers": NUM_LAYERS})
    return with_fields(model, pruning_method="learned", pruning_params={"pruner_checkpoint": checkpoint})


@torch.no_grad()
def test_hard_mode_removes_tokens_below_one_half_and_shortens_the_kv_cache(learned_llava):
    ids = llava_prompt(learned_llava.config.image_token_id, PREFIX, SUFFIX)
    out = learned_llava(input_ids=ids, pixel_values=pixel_values(), use_cache=True)
    lengths = [layer.keys.shape[2] for layer in out.past_key_values.layers]
    stages = learned_llava.language_model.last_pruning_record.stages
    assert [stage.layer for stage in stages] == LAYERS
    for stage in stages:
        assert stage.kept_index.shape[1] == int((stage.scores > 0.5).sum())
    kept = [stage.kept_index.shape[1] for stage in stages]
    assert 0 < kept[-1] <= kept[1] <= kept[0] < 576
    full = ids.shape[1]
    assert lengths[:2] == [full] * 2
    assert lengths[2] == full - 576 + kept[0] and lengths[-1] == full - 576 + kept[-1] < full
    assert learned_llava.pruning_record["kept_per_layer"] == [576] * 2 + [kept[0]] * 2 + [kept[1]] * 2 + [kept[2]] * 2


@torch.no_grad()
def test_hard_mode_generation_with_cache_equals_recompute(learned_llava):
    ids = llava_prompt(learned_llava.config.image_token_id, PREFIX, SUFFIX, seed=3)
    assert_cached_generation_equals_recompute(learned_llava, ids, pixel_values(seed=3), steps=4)


@pytest.mark.parametrize("use_attn_residual", [False, True])
def test_attention_is_computed_only_with_the_residual(tmp_path, use_attn_residual):
    method = LearnedPruning(write_checkpoint(tmp_path / "p.pt", use_attn_residual, layers=[2]))
    calls = []

    def attention(layer, query_index):
        calls.append(layer)
        return torch.rand(1, 4, query_index.shape[1], 20).softmax(-1)

    step = SimpleNamespace(  # the PruneStep fields the method reads
        layer=2,
        span_index=torch.arange(3, 13)[None],
        span_valid=torch.ones(1, 10, dtype=torch.bool),
        query_index=torch.tensor([19]),
        hidden_states=torch.randn(1, 20, 64),
        attention=attention,
    )
    selection = method.select(step, keep=10)
    assert calls == ([2] if use_attn_residual else [])
    assert selection.indices.shape[1] == max(1, int((selection.scores > 0.5).sum()))


def test_configuration_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="needs pruner_checkpoint=.*load_pretrained_model"):
        load_pretrained_model("tiny-random-llava", pruning_method="learned")
    with pytest.raises(FileNotFoundError, match="no pruner checkpoint"):
        load_pretrained_model("tiny-random-llava", pruning_method="learned", pruner_checkpoint=str(tmp_path / "x.pt"))
    with pytest.raises(ValueError, match="a budget of 64 tokens needs pruner_checkpoint"):
        load_pretrained_model("tiny-random-llava", pruning_method="learned", visual_token_num=64)
    with pytest.raises(FileNotFoundError, match="learned_pruner_t100.pt"):  # a budget the model ships no pruner for
        load_pretrained_model("playground/models/shapes-llava", pruning_method="learned", visual_token_num=100)
    checkpoint = write_checkpoint(tmp_path / "deep.pt", False, layers=[6, 40])
    with pytest.raises(ValueError, match=r"pruning layer 40 must lie in \[1, 31\]"):
        load_pretrained_model("tiny-random-llava", pruning_method="learned", pruner_checkpoint=checkpoint)


def test_eval_modes_origin_soft_and_hard(tmp_path):
    import yaml

    checkpoint = write_checkpoint(tmp_path / "pruner.pt", True, layers=[1, 2])
    config = {
        "model_overrides": {"num_hidden_layers": 3},
        "method_settings": {"pruning_layers": [1, 2], "target_keep_ratio": [0.5, 0.2]},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    origin = run_evaluation(str(config_path), "origin", None, num_samples=1, seed=7, max_new_tokens=2)
    hard = run_evaluation(str(config_path), "hard", checkpoint, num_samples=1, seed=7, max_new_tokens=2)
    soft = run_evaluation(str(config_path), "soft", checkpoint, num_samples=1, seed=7, max_new_tokens=2)
    assert origin["equivalent_tokens"] == 576 and hard["equivalent_tokens"] < 576
    assert hard["kv_cache_last_layer"] < origin["kv_cache_last_layer"]
    assert soft["answer_ce"] != origin["answer_ce"] and "equivalent_tokens" not in soft
    planned = run_evaluation(str(config_path), "hard", checkpoint, 1, 7, 2, ["method_settings.visual_token_num=300"])
    assert planned["samples"][0]["kept_per_layer"][1:] == [231, 93]  # geometric plan of 300 tokens over layers 1, 2 of 3
    with pytest.raises(ValueError, match="unknown mode 'sharp'; valid: origin, soft, hard"):
        run_evaluation(str(config_path), "sharp", None, 1, 7, 2)


@torch.no_grad()
def test_budget_keeps_the_planned_counts_exactly(tmp_path):
    """visual_token_num plans the geometric schedule over the checkpoint's layers; each layer keeps exactly
    its count (top-K of the keep logits), whatever the logits' signs, and the budget's equivalent tokens hold."""
    from llava.pruning.budget import equivalent_tokens, geometric_keeps_for_budget

    checkpoint = write_checkpoint(tmp_path / "pruner.pt", use_attn_residual=True)
    planned = geometric_keeps_for_budget("learned", 200, NUM_LAYERS, 576, LAYERS)
    method = LearnedPruning.for_budget(200, NUM_LAYERS, 576, {"pruner_checkpoint": checkpoint})
    assert method.keep_tokens == tuple(planned) and method.schedule(576) == list(zip(LAYERS, planned, strict=True))
    model = build_tiny_llava(seed=0, text_overrides={"num_hidden_layers": NUM_LAYERS})
    model.language_model.set_pruning_method(method)
    ids = llava_prompt(model.config.image_token_id, PREFIX, SUFFIX)
    model(input_ids=ids, pixel_values=pixel_values())
    stages = model.language_model.last_pruning_record.stages
    assert [stage.kept_index.shape[1] for stage in stages] == planned
    assert abs(equivalent_tokens(model.pruning_record["kept_per_layer"]) - 200) < 576 / NUM_LAYERS
    with pytest.raises(ValueError, match="keep_tokens .* one count >= 1 per pruning layer"):
        LearnedPruning(pruner_checkpoint=checkpoint, keep_tokens=(10, 5))
    with pytest.raises(ValueError, match="cannot grow"):
        LearnedPruning(pruner_checkpoint=checkpoint, keep_tokens=(10, 20, 5))


@torch.no_grad()
def test_planned_rule_batch_equals_single(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "pruner.pt", use_attn_residual=True)
    model = build_tiny_llava(seed=0, text_overrides={"num_hidden_layers": NUM_LAYERS})
    model.language_model.set_pruning_method(LearnedPruning.for_budget(250, NUM_LAYERS, 576, {"pruner_checkpoint": checkpoint}))
    ids = torch.cat([llava_prompt(model.config.image_token_id, PREFIX, SUFFIX, seed=s) for s in (1, 2)])
    pixels = torch.cat([pixel_values(seed=s) for s in (1, 2)])
    batched = model(input_ids=ids, pixel_values=pixels).logits[:, -1]
    for row in range(2):
        single = model(input_ids=ids[row : row + 1], pixel_values=pixels[row : row + 1]).logits[:, -1]
        torch.testing.assert_close(batched[row : row + 1], single, atol=1e-4, rtol=1e-4)

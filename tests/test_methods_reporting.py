"""Budget plans of every method, per-layer kept indices, and no N x N attention for PDrop / SparseVLM."""

import pytest
import torch

import llava.pruning.scoring as scoring
from llava.model.builder import load_pretrained_model
from llava.model.language_model.pruning_config import PruningLlamaConfig
from llava.model.tiny import tiny_llama_config
from llava.pruning.registry import available_methods
from llava.pruning.reporting import kept_indices_by_layer, plan_budget
from tests.conftest import llava_prompt, pixel_values

# sparsevlm's official presets for 192 / 128 / 64, as our equivalent tokens count them (docs/methods.md)
PUBLISHED_PRESET_COST = {("sparsevlm", 192): 206.5, ("sparsevlm", 128): 145.41, ("sparsevlm", 64): 82.25}
BUDGETED = ["fastv", "fastv_fine_head", "ablation_a", "pdrop", "sparsevlm", "random", "vispruner", "cdpruner"]


def test_every_registered_inference_method_is_covered():
    assert set(BUDGETED) <= set(available_methods())


@pytest.mark.parametrize("budget", [192, 128, 64])
@pytest.mark.parametrize("name", BUDGETED)
def test_plan_reports_parameters_and_achieved_equivalent_tokens(name, budget):
    params = {"heads": 2} if name == "fastv_fine_head" else {}
    plan = plan_budget(name, budget, 32, 576, params)
    assert abs(plan.equivalent_tokens - PUBLISHED_PRESET_COST.get((name, budget), budget)) <= 1
    assert plan.method.name == name and len(plan.span_per_layer) == 32
    assert plan.summary()["params"] == plan.method.params()
    rebuilt = type(plan.method).from_params(plan.method.params())  # the params round-trip (configs, records)
    assert rebuilt.schedule(576) == plan.method.schedule(576)


@torch.no_grad()
def test_kept_indices_by_layer_follow_the_stages():
    model = load_pretrained_model("tiny-random-llava", pruning_method="pdrop", visual_token_num=128)[1]
    ids = llava_prompt(model.config.image_token_id, 6, 12)
    model(input_ids=ids, pixel_values=pixel_values())
    per_layer = kept_indices_by_layer(model.language_model.last_pruning_record)
    assert per_layer[0] is None and per_layer[1] is None
    sizes = [t.shape[1] for t in per_layer[2:]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] < 576
    for earlier, later in zip(per_layer[2:], per_layer[3:], strict=False):
        assert set(later[0].tolist()) <= set(earlier[0].tolist())  # stages only ever drop tokens


@pytest.mark.parametrize("name", ["pdrop", "sparsevlm"])
@torch.no_grad()
def test_staged_methods_never_materialise_the_full_attention_map(name, monkeypatch):
    shapes = []
    rows = scoring.attention_probs_for_rows

    def recording(queries, keys, query_index, key_valid, scaling):
        shapes.append(tuple(queries.shape))
        return rows(queries, keys, query_index, key_valid, scaling)

    def forbidden(*args, **kwargs):
        raise AssertionError("the N x N attention map was built")

    monkeypatch.setattr(scoring, "attention_probs_for_rows", recording)
    monkeypatch.setattr(scoring, "full_attention_probs", forbidden)
    model = load_pretrained_model("tiny-random-llava", pruning_method=name, visual_token_num=64)[1]
    ids = llava_prompt(model.config.image_token_id, 6, 12)
    model(input_ids=ids, pixel_values=pixel_values())
    stages = len(model.language_model.last_pruning_record.stages)
    assert len(shapes) == stages and all(q <= 12 for _, _, q, _ in shapes)  # rows: at most the 12 text tokens


def test_fine_head_drop_in_class_defaults_to_its_method():
    from llava.model.language_model.drop_in import FastvFineHead_LlamaModel

    config = PruningLlamaConfig.from_llama_config(
        tiny_llama_config(num_hidden_layers=4), fast_v_attention_rank=8, pruning_params={"heads": 2}
    )
    model = FastvFineHead_LlamaModel(config)
    assert model.method.name == "fastv_fine_head" and model.method.heads == 2


@pytest.mark.parametrize("class_name, method, prunes_in_llm", [
    ("SparseVLM_LlamaModel", "sparsevlm", True), ("PDrop_LlamaModel", "pdrop", True),
    ("VisPruner_LlamaModel", "vispruner", False), ("CDPruner_LlamaModel", "cdpruner", False),
])
def test_method_drop_in_classes_default_to_their_method(class_name, method, prunes_in_llm):
    """In-LLM methods drop span tokens from the hidden states; pre-LLM ones leave the decoder unpruned."""
    import llava.model

    config = PruningLlamaConfig.from_llama_config(tiny_llama_config(num_hidden_layers=32))
    model = getattr(llava.model, class_name)(config)
    assert model.method.name == method
    ids = torch.randint(0, config.vocab_size, (1, 600))
    with torch.no_grad():
        kept = model(input_ids=ids, prune_span=(4, 580)).last_hidden_state.shape[1]
    assert (kept < 600) == prunes_in_llm

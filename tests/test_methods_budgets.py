"""One budget API: every method maps 192/128/64 equivalent tokens to its own parameters."""

import pytest
import torch

from llava.pruning.budget import equivalent_tokens, geometric_decay_for_budget, span_tokens_per_layer
from llava.pruning.methods.pdrop import BUDGET_LAYERS
from llava.pruning.methods.sparsevlm import PRUNE_LAYERS, STAGE_BUDGET_PRESETS, scaled_stage_budgets
from llava.pruning.text_guided import (
    debiased_span_attention,
    rater_span_scores,
    rope_positional_bias,
    text_raters,
    top_rater_heads,
)


@pytest.mark.parametrize(("target", "published"), [(192, 0.581), (128, 0.437), (64, 0.196)])
def test_pdrop_lambda_reproduces_the_published_settings(target, published):
    assert abs(geometric_decay_for_budget("pdrop", target, 32, 576, BUDGET_LAYERS) - published) < 0.002


@pytest.mark.parametrize("target", [192, 128, 64, 100])
def test_sparsevlm_scaled_budgets_cost_the_target(target):
    preset = STAGE_BUDGET_PRESETS[min(STAGE_BUDGET_PRESETS, key=lambda b: abs(b - target))]
    budgets = scaled_stage_budgets(target, 32, 576, PRUNE_LAYERS, preset)
    cost = equivalent_tokens(span_tokens_per_layer(32, 576, list(zip(PRUNE_LAYERS, budgets, strict=True))))
    assert abs(cost - target) <= 1
    assert budgets == sorted(budgets, reverse=True)


def test_published_sparsevlm_budgets_cost_less_than_their_label():
    costs = [
        equivalent_tokens(span_tokens_per_layer(32, 576, list(zip(PRUNE_LAYERS, STAGE_BUDGET_PRESETS[t], strict=True))))
        for t in (192, 128, 64)
    ]
    assert [round(c, 1) for c in costs] == [188.2, 123.9, 61.7]


def test_text_raters_are_the_text_tokens_most_related_to_the_image():
    visual = torch.zeros(8, 4)
    visual[:, 0] = 1.0
    text = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [4.0, 0, 0, 0], [0, 0, 5.0, 0]])
    assert text_raters(visual, text).tolist() == [True, False, True, False]
    assert text_raters(visual, text[1:2]).tolist() == [True]  # nobody above the mean: everyone rates


def test_rater_scores_ignore_padding_rows():
    attn = torch.zeros(1, 2, 3, 4)
    attn[0, :, 0, 1] = 1.0  # rater row looks at token 1
    attn[0, :, 2, 3] = 1.0  # padding row looks at token 3
    scores = rater_span_scores(attn, torch.tensor([[0.5, 0.5, 0.0]]))
    assert scores.argmax() == 1 and scores[0, 3] == 0


def _rope(positions: torch.Tensor, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    angles = positions[:, None].float() * inv_freq[None]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos()[None], emb.sin()[None]


def test_rope_bias_is_relative_peaks_at_distance_zero_and_debiasing_flattens_it():
    query, keys = _rope(torch.tensor([20])), _rope(torch.arange(21))
    bias = rope_positional_bias(query, keys)  # [1, 1, 21]
    assert bias[0, 0].argmax() == 20 and torch.isclose(bias.sum(), torch.tensor(1.0))
    shifted = rope_positional_bias(_rope(torch.tensor([120])), _rope(torch.arange(100, 121)))
    assert torch.allclose(bias, shifted, atol=1e-4)
    flat = debiased_span_attention(bias[:, None], bias)  # attention equal to the bias -> uniform
    assert torch.allclose(flat, torch.full_like(flat, 1 / 21))


def test_top_rater_heads_ranks_by_weighted_span_mass():
    attn = torch.zeros(1, 3, 2, 4)
    attn[0, 2, 0] = 0.9  # head 2 attends from the rater row
    attn[0, 1, 1] = 1.0  # head 1 attends only from the padding row (weight 0)
    assert top_rater_heads(attn, torch.tensor([[1.0, 0.0]]), 1).tolist() == [[2]]

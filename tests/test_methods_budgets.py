"""One budget API: every method maps 192/128/64 equivalent tokens to its own parameters."""

import pytest
import torch

from llava.pruning.budget import equivalent_tokens, geometric_decay_for_budget, span_tokens_per_layer
from llava.pruning.methods.pdrop import BUDGET_LAYERS
from llava.pruning.methods.sparsevlm import STAGE_BUDGET_PRESETS, SparseVLM
from llava.pruning.text_guided import rater_span_scores, rope_logit_bias, text_raters, top_rater_heads


@pytest.mark.parametrize(("target", "published"), [(192, 0.581), (128, 0.437), (64, 0.196)])
def test_pdrop_lambda_reproduces_the_published_settings(target, published):
    assert abs(geometric_decay_for_budget("pdrop", target, 32, 576, BUDGET_LAYERS) - published) < 0.002


@pytest.mark.parametrize("version", ["v1.5", "v2"])
@pytest.mark.parametrize("target", [192, 128, 96, 64])
def test_sparsevlm_published_budgets_are_the_official_presets(target, version):
    method = SparseVLM.for_budget(target, 32, 576, {"version": version})
    assert method.stage_budgets == STAGE_BUDGET_PRESETS[version][target]


@pytest.mark.parametrize(("target", "span"), [(100, 576), (192, 530), (64, 300)])
def test_sparsevlm_other_budgets_scale_the_nearest_preset_to_our_equivalent_tokens(target, span):
    method = SparseVLM.for_budget(target, 32, span)
    assert abs(equivalent_tokens(span_tokens_per_layer(32, span, method.schedule(span))) - target) <= 1
    assert list(method.stage_budgets) == sorted(method.stage_budgets, reverse=True)


def test_sparsevlm_presets_as_the_authors_and_we_count_them():
    """The authors average the visual tokens *leaving* each layer (clusters included): the presets hit their
    label; our equivalent tokens count what each layer processes (pruning after layers 2, 6, 15)."""
    authors, ours = [], []
    for target in (192, 128, 64):
        schedule = SparseVLM(stage_budgets=STAGE_BUDGET_PRESETS["v1.5"][target]).schedule(576)
        ours.append(round(equivalent_tokens(span_tokens_per_layer(32, 576, schedule)), 2))
        leaving = [(layer - 1, keep) for layer, keep in schedule]
        authors.append(round(equivalent_tokens(span_tokens_per_layer(32, 576, leaving)), 2))
    assert authors == [192.03, 128.62, 64.81]
    assert ours == [206.5, 145.41, 82.25]


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


def test_rope_logit_bias_is_the_raw_all_ones_logit():
    """``RoPE_i(1) . RoPE_j(1) / sqrt(d) = 2 sum_k cos((i - j) theta_k) / sqrt(d)``: relative, sqrt(d) at i = j."""
    bias = rope_logit_bias(_rope(torch.tensor([20])), _rope(torch.arange(21)))  # [1, 1, 21]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    expected = 2 * torch.cos((20 - torch.arange(21.0))[:, None] * inv_freq).sum(dim=-1) / 8**0.5
    torch.testing.assert_close(bias[0, 0], expected)
    assert torch.isclose(bias[0, 0, 20], torch.tensor(8**0.5))
    shifted = rope_logit_bias(_rope(torch.tensor([120])), _rope(torch.arange(100, 121)))
    torch.testing.assert_close(bias, shifted, atol=1e-4, rtol=1e-4)


def test_top_rater_heads_ranks_by_weighted_span_mass():
    attn = torch.zeros(1, 3, 2, 4)
    attn[0, 2, 0] = 0.9  # head 2 attends from the rater row
    attn[0, 1, 1] = 1.0  # head 1 attends only from the padding row (weight 0)
    assert top_rater_heads(attn, torch.tensor([[1.0, 0.0]]), 1).tolist() == [[2]]

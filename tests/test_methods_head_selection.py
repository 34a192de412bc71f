"""Head strategies of FastV fine-head and the dynamic selector (ablation_a) on hand-made attention rows."""

import pytest
import torch

from llava.pruning.head_selection import (
    HEAD_STRATEGIES,
    aggregate_best_heads,
    choose_heads,
    dynamic_candidates,
    estimate_head_count,
    gini_coefficient,
    head_scores,
    select_tokens_dynamic,
)
from llava.pruning.selection import top_r_sorted

S = 32


def _one_hot_vs_uniform() -> torch.Tensor:
    """``[1, 3, S]``: head 0 one-hot on token 5, head 1 uniform, head 2 mildly peaked."""
    one_hot = torch.zeros(S)
    one_hot[5] = 1.0
    uniform = torch.full((S,), 1.0 / S)
    mild = torch.linspace(1.0, 2.0, S)
    return torch.stack([one_hot, uniform, mild / mild.sum()])[None]


@pytest.mark.parametrize(
    "strategy", ["max_attention", "sparsity", "variance", "attention_range", "weighted_quality", "gini", "top_k_sum"]
)
def test_one_hot_head_wins_and_uniform_head_loses(strategy):
    scores = head_scores(_one_hot_vs_uniform(), strategy, 1)[0]
    assert scores.argmax() == 0
    assert scores.argmin() == 1


def test_sum_prefers_the_head_with_more_span_mass():
    attn = torch.stack([torch.full((S,), 0.5 / S), torch.full((S,), 0.9 / S)])[None]
    assert head_scores(attn, "sum", 1)[0].argmax() == 1


def test_entropy_prefers_the_head_closest_to_the_mean_entropy():
    scores = head_scores(_one_hot_vs_uniform(), "entropy", 1)[0]
    # the one-hot head's entropy is far below the others': it is the farthest from the mean
    assert scores.argmin() == 0


@pytest.mark.parametrize("strategy", HEAD_STRATEGIES)
def test_identical_heads_get_equal_scores(strategy):
    row = torch.rand(S, generator=torch.Generator().manual_seed(0)).softmax(-1)
    attn = row.expand(1, 6, S).clone()
    scores = head_scores(attn, strategy, 2)[0]
    finite = scores[torch.isfinite(scores)]
    assert torch.allclose(finite, finite[0].expand_as(finite), atol=1e-6), scores


@pytest.mark.parametrize("strategy", HEAD_STRATEGIES)
def test_every_strategy_gives_finite_scores_for_the_selected_heads_and_a_valid_keep_set(strategy):
    attn = torch.rand(2, 8, S, generator=torch.Generator().manual_seed(1)).pow(4).softmax(-1)
    choice = choose_heads(attn, 3, strategy)
    indices = top_r_sorted(choice.token_scores, 10)
    assert indices.shape == (2, 10)
    assert (indices.diff(dim=-1) > 0).all()
    assert torch.isfinite(choice.token_scores).all()
    assert choice.head_index.shape == (2, 3)
    assert torch.allclose(choice.head_weights.sum(-1), torch.ones(2, dtype=choice.head_weights.dtype))


def test_multi_objective_and_graph_based_rank_a_distinct_head_apart_from_clones():
    generator = torch.Generator().manual_seed(2)
    clone = torch.rand(S, generator=generator).softmax(-1)
    distinct = torch.zeros(S)
    distinct[:4] = 0.25
    attn = torch.stack([clone, clone, clone, distinct])[None]
    scores = head_scores(attn, "multi_objective", 1)[0]
    assert not torch.allclose(scores[3], scores[0])
    assert torch.allclose(scores[0], scores[1]) and torch.allclose(scores[1], scores[2])


def test_hierarchical_coarse_stage_excludes_heads_and_falls_back_with_few_heads():
    attn = torch.rand(1, 12, S, generator=torch.Generator().manual_seed(3)).pow(3).softmax(-1)
    scores = head_scores(attn, "hierarchical", 2)[0]  # coarse keeps max(4, 6) = 6 of 12
    assert torch.isfinite(scores).sum() == 6
    few = head_scores(attn[:, :4], "hierarchical", 4)[0]  # coarse size 4 <= H: fallback, all heads scored
    assert torch.isfinite(few).all()


def test_aggregation_weights_the_selected_heads_by_softmax_of_their_scores():
    attn = _one_hot_vs_uniform()
    scores = torch.tensor([[2.0, 0.0, 1.0]])
    choice = aggregate_best_heads(attn, scores, 2)
    assert choice.head_index.tolist() == [[0, 2]]
    weights = torch.tensor([2.0, 1.0]).softmax(0)
    expected = weights[0] * attn[0, 0] + weights[1] * attn[0, 2]
    assert torch.allclose(choice.token_scores[0].float(), expected)


def test_gini_of_equal_and_one_hot_values():
    assert gini_coefficient(torch.ones(10)).abs() < 1e-6
    one_hot = torch.zeros(10)
    one_hot[3] = 1
    assert torch.isclose(gini_coefficient(one_hot), torch.tensor(0.9))


@pytest.mark.parametrize(
    ("heads", "strategy", "message"),
    [
        (5, "sparsity", r"valid range is \[1, 4\]"),
        (0, "sparsity", r"valid range is \[1, 4\]"),
        (2, "loudness", "valid: sum, variance, entropy"),
    ],
)
def test_bad_head_selection_gives_clear_errors(heads, strategy, message):
    with pytest.raises(ValueError, match=message):
        head_scores(torch.rand(1, 4, S), strategy, heads)


def test_dynamic_candidates_switch_at_166_and_98():
    assert dynamic_candidates(200) == dynamic_candidates(166) == (("sparsity", "hierarchical"), (14, 26))
    assert dynamic_candidates(165)[0] == ("sparsity", "hierarchical", "top_k_sum", "max_attention")
    assert dynamic_candidates(98)[1] == (8, 26)
    assert dynamic_candidates(97) == (("graph_based", "multi_objective", "attention_range"), (6, 18))


def test_head_count_estimate_stays_in_range():
    generator = torch.Generator().manual_seed(4)
    for _ in range(20):
        scores = torch.rand(32, generator=generator) ** 3
        for head_range in [(14, 26), (8, 26), (6, 18)]:
            assert head_range[0] <= estimate_head_count(scores, head_range) <= head_range[1]
    # one clearly better head: gap rule and mass rule say few heads, the range's lower end wins
    assert estimate_head_count(torch.tensor([10.0] + [0.0] * 31), (6, 18)) == 6


@pytest.mark.parametrize("keep", [200, 120, 30])
def test_dynamic_selection_is_deterministic_and_in_range(keep):
    attn = torch.rand(3, 32, 576, generator=torch.Generator().manual_seed(5)).pow(6).softmax(-1)
    first = select_tokens_dynamic(attn, keep)
    second = select_tokens_dynamic(attn, keep)
    assert torch.equal(first.indices, second.indices)
    assert first.metadata["head_strategy"] == second.metadata["head_strategy"]
    candidates, (low, high) = dynamic_candidates(keep)
    assert set(first.metadata["head_strategy"]) <= set(candidates)
    assert all(low <= h <= high for h in first.metadata["heads"])
    single = select_tokens_dynamic(attn[1:2], keep)
    assert torch.equal(single.indices[0], first.indices[1])

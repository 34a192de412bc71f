"""Pure token-selection functions: strategies on hand-made attention, and properties (hypothesis)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llava.pruning.selection import (
    TOKEN_SELECTION_STRATEGIES,
    score_span_tokens,
    seeded_random_scores,
    select_span_tokens,
    top_r_sorted,
    top_valid_sorted,
)


def test_avg_all_heads_ranks_by_mean_over_heads():
    attn = torch.tensor([[[0.1, 0.5, 0.2, 0.2], [0.3, 0.1, 0.4, 0.2]]])  # mean: .2 .3 .3 .2
    assert select_span_tokens(attn, 2, "avg_all_heads").indices.tolist() == [[1, 2]]


def test_max_head_uses_only_the_head_with_most_span_mass():
    weak = [0.05, 0.0, 0.0, 0.05]  # total 0.1
    strong = [0.0, 0.3, 0.0, 0.4]  # total 0.7
    attn = torch.tensor([[weak, strong]])
    selection = select_span_tokens(attn, 2, "max_head")
    assert selection.indices.tolist() == [[1, 3]]
    assert selection.metadata["max_head_idx"] == [1]
    assert selection.metadata["head_importance"][0] == pytest.approx([0.1, 0.7])


def test_weighted_combination_interpolates_between_max_head_and_the_rest():
    attn = torch.tensor([[[0.6, 0.0, 0.1], [0.0, 0.2, 0.0], [0.0, 0.2, 0.0]]])
    only_max = score_span_tokens(attn, "weighted_combination", alpha=1.0)
    only_rest = score_span_tokens(attn, "weighted_combination", alpha=0.0)
    half = score_span_tokens(attn, "weighted_combination", alpha=0.5)
    assert torch.allclose(only_max, attn[:, 0])
    assert torch.allclose(only_rest, attn[:, 1:].mean(dim=1))
    assert torch.allclose(half, 0.5 * attn[:, 0] + 0.5 * attn[:, 1:].mean(dim=1))


def test_top_r_sorted_returns_original_order():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    assert top_r_sorted(scores, 3).tolist() == [[1, 2, 3]]


def test_top_valid_sorted_chooses_invalid_slots_last_and_equals_top_r_sorted_when_all_are_valid():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    valid = torch.tensor([[True, False, True, True], [False, True, True, False]])
    assert top_valid_sorted(scores, valid, 2).tolist() == [[2, 3], [1, 2]]
    assert top_valid_sorted(scores, valid, 3).tolist() == [[0, 2, 3], [0, 1, 2]]
    ties = torch.tensor([[0.5, 0.5, 0.5, 0.2, 0.5]])
    assert torch.equal(top_valid_sorted(ties, torch.ones_like(ties, dtype=torch.bool), 2), top_r_sorted(ties, 2))


def test_random_scores_are_seeded():
    a, b, c = seeded_random_scores(50, 3), seeded_random_scores(50, 3), seeded_random_scores(50, 4)
    assert a.shape == (1, 50) and torch.equal(a, b) and not torch.equal(a, c)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 4),
    span=st.integers(1, 40),
    data=st.data(),
    strategy=st.sampled_from(TOKEN_SELECTION_STRATEGIES),
)
def test_selection_properties(batch, heads, span, data, strategy):
    r = data.draw(st.integers(1, span))
    seed = data.draw(st.integers(0, 10_000))
    attn = torch.rand(batch, heads, span, generator=torch.Generator().manual_seed(seed)).softmax(-1)
    indices = select_span_tokens(attn, r, strategy, alpha=0.3).indices
    assert indices.shape == (batch, r)
    for row in indices.tolist():
        assert row == sorted(set(row)), "indices must be unique and ascending"
        assert all(0 <= i < span for i in row)


@pytest.mark.parametrize("r", [0, -1, 11])
def test_keep_count_outside_span_is_an_error(r):
    with pytest.raises(ValueError, match=r"valid range is \[1, 10\]"):
        select_span_tokens(torch.rand(1, 2, 10), r)


def test_unknown_strategy_and_bad_alpha_are_errors():
    with pytest.raises(ValueError, match="valid: avg_all_heads, max_head, weighted_combination"):
        score_span_tokens(torch.rand(1, 2, 5), "best_head")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_span_tokens(torch.rand(1, 2, 5), "weighted_combination", alpha=1.5)

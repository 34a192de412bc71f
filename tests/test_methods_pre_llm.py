"""Pure parts of the pre-LLM methods: CDPruner's DPP and relevance, VisPruner's duplicate removal."""

from itertools import combinations

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.pruning.diversity import remove_duplicates, vispruner_keep
from llava.pruning.dpp import conditional_kernel, dpp_greedy_map, instruction_relevance


def _naive_greedy(kernel: torch.Tensor, count: int) -> list[int]:
    """Greedy MAP by recomputing log det of every candidate set (the slow definition)."""
    chosen: list[int] = []
    for _ in range(count):
        gains = {
            j: torch.linalg.slogdet(kernel[chosen + [j]][:, chosen + [j]].double())[1].item()
            for j in range(kernel.shape[0])
            if j not in chosen
        }
        chosen.append(max(gains, key=gains.get))
    return chosen


def _random_kernel(n: int, seed: int) -> torch.Tensor:
    features = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
    relevance = torch.rand(n, generator=torch.Generator().manual_seed(seed + 100)) + 0.1
    return conditional_kernel(features, relevance)


@pytest.mark.parametrize("seed", range(5))
def test_incremental_cholesky_greedy_equals_naive_greedy(seed):
    kernel = _random_kernel(12, seed)
    assert dpp_greedy_map(kernel, 5).tolist() == _naive_greedy(kernel, 5)


def test_greedy_equals_brute_force_map_on_small_kernels():
    # two tight clusters and two loners: MAP of size 3 takes one per group, the strongest first
    features = torch.tensor([[1.0, 0, 0], [0.99, 0.01, 0], [0, 1.0, 0], [0, 0.98, 0.02], [0, 0, 1.0]])
    relevance = torch.tensor([1.0, 0.9, 0.8, 0.95, 0.5])
    kernel = conditional_kernel(features, relevance).double()
    for count in (1, 2, 3):
        best = max(combinations(range(5), count), key=lambda s: torch.linalg.det(kernel[list(s)][:, list(s)]).item())
        assert sorted(dpp_greedy_map(kernel, count).tolist()) == sorted(best)


def test_the_previous_ridge_is_an_option_that_solves_past_the_rank():
    """``ridge=1e-3`` (our previous default): features of width 3 give a kernel of rank 3, and the greedy
    equals the naive greedy on ``L + eps I`` for all 7 picks (distinct), the first 3 being those of ``L``."""
    features = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    relevance = torch.linspace(0.2, 1.0, 10)
    kernel = conditional_kernel(features, relevance).double()
    ridged = kernel + 1e-3 * kernel.diagonal().max() * torch.eye(10, dtype=torch.float64)
    chosen = dpp_greedy_map(kernel, 7, ridge=1e-3).tolist()
    assert chosen == _naive_greedy(ridged, 7) and len(set(chosen)) == 7
    assert chosen[:3] == _naive_greedy(kernel, 3)


def test_dpp_rejects_bad_counts():
    with pytest.raises(ValueError, match=r"valid range is \[1, 4\]"):
        dpp_greedy_map(torch.eye(4), 5)


def test_relevance_is_minmax_normalised_negative_cosine():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0]])
    assert instruction_relevance(image, text).tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-5)


@pytest.mark.parametrize("reorder", [True, False])
def test_duplicate_removal_drops_exact_duplicates_first(reorder):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(16, 32, generator=generator)
    features[5] = features[4]  # 4 (first half) duplicates 5 (second half)
    features[9] = features[2]  # 2 duplicates 9
    kept = remove_duplicates(features, torch.arange(16), 14, reorder=reorder)
    assert 4 not in kept.tolist() and 2 not in kept.tolist() and len(kept) == 14
    assert (kept.diff() > 0).all() != reorder  # in place: still ascending; official: re-ordered


def test_vispruner_keeps_the_top_cls_tokens_and_fills_the_rest():
    attention = torch.zeros(20)
    attention[[3, 7, 11]] = torch.tensor([0.5, 0.3, 0.2])
    features = torch.randn(20, 8, generator=torch.Generator().manual_seed(1))
    kept = vispruner_keep(attention, features, 6, important_ratio=0.5)
    assert {3, 7, 11} <= set(kept.tolist())
    assert len(kept) == 6 and (kept.diff() > 0).all()
    with pytest.raises(ValueError, match=r"valid range is \[1, 20\]"):
        vispruner_keep(attention, features, 21)


def _previous_vispruner(attention: torch.Tensor, features: torch.Tensor, keep: int) -> set[int]:
    """Our rule before issue 29: ``round(T / 2)`` important tokens; the rest from a raster-order list, each
    round dropping up to 8 of its even positions with the highest cosine to an odd one, order kept."""
    important = attention.topk(round(keep * 0.5)).indices
    pool = [i for i in range(len(attention)) if i not in set(important.tolist())]
    unit = features / features.norm(dim=-1, keepdim=True)
    while len(pool) > keep - len(important):
        evens, odds = pool[0::2], pool[1::2]
        score = (unit[evens] @ unit[odds].T).max(dim=1).values
        drop = min(8, len(pool) - keep + len(important))
        dropped = {evens[i] for i in score.argsort(descending=True, stable=True)[:drop].tolist()}
        pool = [i for i in pool if i not in dropped]
    return set(important.tolist()) | set(pool)


@pytest.mark.parametrize("keep", [192, 128, 67, 64])
def test_vispruner_options_reach_the_previous_rule(keep):
    generator = torch.Generator().manual_seed(keep)
    attention = torch.rand(576, generator=generator, dtype=torch.float64)
    features = torch.randn(576, 24, generator=generator, dtype=torch.float64)
    previous = vispruner_keep(attention, features, keep, count_rounding="round", diverse_order="raster")
    assert set(previous.tolist()) == _previous_vispruner(attention, features, keep)


def test_vispruner_splits_an_odd_list_where_the_official_indexing_fails():
    """``int(66 / 2) = 33`` leaves an odd 543 tokens (the official code raises ``IndexError``): ours goes on."""
    generator = torch.Generator().manual_seed(0)
    kept = vispruner_keep(torch.rand(576, generator=generator), torch.randn(576, 16, generator=generator), 66)
    assert len(set(kept.tolist())) == 66


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("vispruner", {"diverse_order": "zigzag"}, "unknown diverse_order 'zigzag'; valid: attention, raster"),
        ("vispruner", {"count_rounding": "ceil"}, "unknown count_rounding 'ceil'; valid: round, floor"),
        ("cdpruner", {"ridge": -1.0}, "ridge must be >= 0"),
    ],
)
def test_bad_options_fail_at_load_time_naming_the_valid_values(method, params, message):
    with pytest.raises(ValueError, match=message):
        load_pretrained_model("tiny-random-llava", pruning_method=method, visual_token_num=64, **params)

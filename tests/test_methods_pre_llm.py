"""Pure parts of the pre-LLM methods: CDPruner's DPP and relevance, VisPruner's duplicate removal."""

from itertools import combinations

import pytest
import torch

from llava.pruning.diversity import remove_duplicates, vispruner_keep
from llava.pruning.dpp import RIDGE, conditional_kernel, dpp_greedy_map, instruction_relevance


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


def test_a_rank_deficient_kernel_is_solved_past_its_rank_with_the_ridge():
    """Features of width 3 give a kernel of rank 3: the greedy still equals the naive greedy on L + eps I for
    all 7 picks (distinct, no division by a vanishing gain), and the first 3 are those of L itself."""
    features = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    relevance = torch.linspace(0.2, 1.0, 10)
    kernel = conditional_kernel(features, relevance).double()
    ridged = kernel + RIDGE * kernel.diagonal().max() * torch.eye(10, dtype=torch.float64)
    chosen = dpp_greedy_map(kernel, 7).tolist()
    assert chosen == _naive_greedy(ridged, 7) and len(set(chosen)) == 7
    assert chosen[:3] == _naive_greedy(kernel, 3)


def test_dpp_rejects_bad_counts():
    with pytest.raises(ValueError, match=r"valid range is \[1, 4\]"):
        dpp_greedy_map(torch.eye(4), 5)


def test_relevance_is_minmax_normalised_negative_cosine():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0]])
    assert instruction_relevance(image, text).tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-5)


def test_duplicate_removal_drops_exact_duplicates_first():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(16, 32, generator=generator)
    features[5] = features[4]  # 4 (first half) duplicates 5 (second half)
    features[9] = features[2]  # 2 duplicates 9
    kept = remove_duplicates(features, torch.arange(16), 14)
    assert 4 not in kept.tolist() and 2 not in kept.tolist()
    assert len(kept) == 14 and (kept.diff() > 0).all()


def test_vispruner_keeps_the_top_cls_tokens_and_fills_the_rest_in_raster_order():
    attention = torch.zeros(20)
    attention[[3, 7, 11]] = torch.tensor([0.5, 0.3, 0.2])
    features = torch.randn(20, 8, generator=torch.Generator().manual_seed(1))
    kept = vispruner_keep(attention, features, 6, important_ratio=0.5)
    assert {3, 7, 11} <= set(kept.tolist())
    assert len(kept) == 6 and (kept.diff() > 0).all()
    with pytest.raises(ValueError, match=r"valid range is \[1, 20\]"):
        vispruner_keep(attention, features, 21)

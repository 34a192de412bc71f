"""SparseVLM token recycling: counts, density-peak clustering, merging, and the engine's merged slots."""

import pytest
import torch

from llava.pruning.methods.sparsevlm import SparseVLM
from llava.pruning.recycling import (
    density_peak_clusters,
    kept_count_with_recycling,
    merge_clusters,
    recycle_pruned_tokens,
    recycled_and_cluster_counts,
)
from llava.pruning.selection import top_r_sorted
from tests.conftest import SMALL_LM, pruned_lm


def test_recycled_and_cluster_counts():
    assert recycled_and_cluster_counts(0, 0.3) == (0, 0)
    assert recycled_and_cluster_counts(100, 0.3) == (30, 4)
    assert recycled_and_cluster_counts(276, 0.3) == (83, 9)
    assert recycled_and_cluster_counts(1, 0.3) == (0, 0)


@pytest.mark.parametrize("span", [576, 300, 37])
def test_kept_plus_cluster_tokens_fill_the_budget_exactly(span):
    smallest = 1 + recycled_and_cluster_counts(span - 1, 0.3)[1]  # keep one token, cluster the rest
    for budget in range(smallest, span + 1):
        kept = kept_count_with_recycling(span, budget, 0.3)
        assert kept + recycled_and_cluster_counts(span - kept, 0.3)[1] == budget
    assert kept_count_with_recycling(span, span, 0.3) == span
    with pytest.raises(ValueError, match=f"the smallest budget that works is {smallest}"):
        kept_count_with_recycling(span, smallest - 1, 0.3)
    with pytest.raises(ValueError, match=r"valid range is \[1, "):
        kept_count_with_recycling(span, span + 1, 0.3)


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0] * 8, [10.0] * 8, [-10.0] * 4 + [10.0] * 4])
    labels = torch.arange(3).repeat_interleave(torch.tensor([7, 6, 9]))  # more than k = 5 neighbours each
    points = centres[labels] + 0.3 * torch.randn(len(labels), 8, generator=generator)
    permutation = torch.randperm(len(labels), generator=generator)
    return points[permutation], labels[permutation]


def test_density_peaks_recover_separated_blobs():
    points, labels = _blobs()
    centres, assignment = density_peak_clusters(points, 3)
    assert torch.equal(centres, centres.sort().values)
    assert torch.equal(assignment[centres], torch.arange(3))  # every centre joins its own cluster
    for blob in range(3):  # each blob is exactly one cluster
        assert assignment[labels == blob].unique().numel() == 1
    assert assignment.unique().numel() == 3


def test_density_peaks_on_duplicates_and_single_points():
    same = torch.ones(6, 4)
    centres, assignment = density_peak_clusters(same, 2)
    assert torch.equal(assignment[centres], torch.arange(2))
    centres, assignment = density_peak_clusters(torch.randn(1, 4), 1)
    assert centres.tolist() == [0] and assignment.tolist() == [0]
    with pytest.raises(ValueError, match=r"valid range is \[1, 6\]"):
        density_peak_clusters(same, 7)


def test_merge_is_the_mean_of_members():
    hidden = torch.arange(12.0).view(4, 3)
    merged = merge_clusters(hidden, torch.tensor([1, 0, 1, 1]), 2)
    assert torch.allclose(merged[0], hidden[1])
    assert torch.allclose(merged[1], hidden[[0, 2, 3]].mean(dim=0))


def test_recycle_places_clusters_of_the_best_pruned_tokens_at_their_centres():
    generator = torch.Generator().manual_seed(3)
    span, keep = 120, 40
    scores = torch.rand(span, generator=generator)
    hidden = torch.randn(span, 16, generator=generator)
    kept_count = kept_count_with_recycling(span, keep, 0.3)
    kept = scores.topk(kept_count).indices.sort().values
    indices, columns, merged = recycle_pruned_tokens(scores, hidden, kept, 0.3)
    recycled_count, clusters = recycled_and_cluster_counts(span - kept_count, 0.3)
    assert indices.numel() == keep == kept_count + clusters and torch.equal(indices, indices.sort().values)
    assert set(kept.tolist()) <= set(indices.tolist())
    centres = indices[columns]
    pruned = [i for i in range(span) if i not in set(kept.tolist())]
    best_pruned = sorted(pruned, key=lambda i: -scores[i].item())[:recycled_count]
    assert set(centres.tolist()) <= set(best_pruned)
    # each merged row is the mean of some members of the recycled set, and its centre is one of them
    recycled = torch.tensor(best_pruned)
    for centre, row in zip(centres.tolist(), merged, strict=True):
        distances = (hidden[recycled] - row).norm(dim=-1)
        assert distances.min() <= (hidden[centre] - row).norm() + 1e-6


def test_recycling_parameters_are_checked():
    with pytest.raises(ValueError, match=r"recycle_ratio must lie in \(0, 1\]"):
        SparseVLM(recycling=True, recycle_ratio=0.0)
    method = SparseVLM(stage_budgets=(300, 3, 2), recycling=True)
    method.validate(32, None)  # span unknown: nothing to check yet
    with pytest.raises(ValueError, match="smallest budget that works is"):
        method.validate(32, 576)
    SparseVLM(stage_budgets=(300, 3, 2)).validate(32, 576)  # without recycling these budgets are fine


@torch.no_grad()
def test_engine_feeds_cluster_means_into_the_pruned_layer(stock_lm):
    """The hidden state entering layer 2 at a cluster slot == the mean of its members' layer-1 outputs."""
    model = pruned_lm(stock_lm, pruning_method="sparsevlm",
                      pruning_params={"prune_layers": [2], "stage_budgets": [20], "recycling": True})
    ids = torch.randint(5, SMALL_LM["vocab_size"], (1, 90), generator=torch.Generator().manual_seed(1))
    captured = {}
    hooks = [model.model.layers[1].register_forward_hook(lambda m, a, out: captured.setdefault("out1", out)),
             model.model.layers[2].register_forward_pre_hook(lambda m, a: captured.setdefault("in2", a[0]))]
    try:
        model(ids, prune_span=(5, 75), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    out1 = captured["out1"][0] if isinstance(captured["out1"], tuple) else captured["out1"]
    stage = model.model.last_pruning_record.stages[0]
    assert stage.kept_index.shape[1] == 20 and stage.metadata["cluster_tokens"] >= 1
    scores = stage.scores[:1]
    kept = top_r_sorted(scores, kept_count_with_recycling(70, 20, 0.3))[0]
    indices, columns, merged = recycle_pruned_tokens(scores[0], out1[0, 5:75], kept, 0.3)
    assert (indices + 5).tolist() == stage.kept_index[0].tolist()
    assert stage.metadata["merged_positions"][0] == (indices[columns] + 5).tolist()
    layer_input = captured["in2"][0]  # prefix (5) + 20 span tokens + suffix
    for column in range(20):
        expected = merged[columns.tolist().index(column)] if column in columns.tolist() else out1[0, 5 + indices[column]]
        assert torch.allclose(layer_input[5 + column], expected, atol=1e-6), column
    assert not torch.allclose(layer_input[5 + columns[0]], out1[0, 5 + indices[columns[0]]])

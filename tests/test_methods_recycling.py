"""SparseVLM token recycling: counts, density-peak clustering, merging, and where the engine puts cluster tokens."""

import pytest
import torch

from llava.pruning.methods.sparsevlm import SparseVLM, cluster_layout, replacement_columns
from llava.pruning.recycling import (
    density_peak_clusters,
    merge_clusters,
    recycle_pruned_tokens,
    recycled_and_cluster_counts,
)
from tests.conftest import SMALL_LM, pruned_lm


def test_recycled_and_cluster_counts_are_the_official_int_plus_one():
    assert recycled_and_cluster_counts(0) == (0, 0)
    assert recycled_and_cluster_counts(1) == (1, 1)
    assert recycled_and_cluster_counts(100) == (31, 4)  # int(30.000000000000004) + 1, int(3.1) + 1
    assert recycled_and_cluster_counts(276) == (83, 9)
    assert recycled_and_cluster_counts(302) == (91, 10)


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0] * 8, [10.0] * 8, [-10.0] * 4 + [10.0] * 4])
    labels = torch.arange(3).repeat_interleave(torch.tensor([7, 6, 9]))
    points = centres[labels] + 0.3 * torch.randn(len(labels), 8, generator=generator)
    permutation = torch.randperm(len(labels), generator=generator)
    return points[permutation], labels[permutation]


def test_density_peaks_recover_separated_blobs():
    points, labels = _blobs()
    centres, assignment = density_peak_clusters(points, 3)
    assert torch.equal(assignment[centres], torch.arange(3))  # every centre joins its own cluster
    for blob in range(3):  # each blob is exactly one cluster
        assert assignment[labels == blob].unique().numel() == 1
    assert assignment.unique().numel() == 3


def test_density_peaks_on_duplicates_and_single_points():
    same = torch.ones(6, 4)
    centres, assignment = density_peak_clusters(same, 2)  # equal densities: nobody is denser, ties to low index
    assert centres.tolist() == [0, 1] and assignment.tolist() == [0, 1, 0, 0, 0, 0]
    centres, assignment = density_peak_clusters(torch.randn(1, 4), 1)
    assert centres.tolist() == [0] and assignment.tolist() == [0]
    with pytest.raises(ValueError, match=r"valid range is \[1, 6\]"):
        density_peak_clusters(same, 7)


def test_merge_is_the_official_sum_over_members_plus_eps():
    hidden = torch.arange(12.0).view(4, 3)
    merged = merge_clusters(hidden, torch.tensor([1, 0, 1, 1]), 2)
    assert torch.allclose(merged[0], hidden[1] / (1 + 1e-6))
    assert torch.allclose(merged[1], hidden[[0, 2, 3]].sum(dim=0) / (3 + 1e-6))


def test_recycle_clusters_the_best_pruned_tokens():
    generator = torch.Generator().manual_seed(3)
    span = 120
    scores = torch.rand(span, generator=generator)
    hidden = torch.randn(span, 16, generator=generator)
    kept = scores.topk(40).indices.sort().values
    centres, merged = recycle_pruned_tokens(scores, hidden, kept)
    recycled_count, clusters = recycled_and_cluster_counts(span - 40)
    assert (recycled_count, clusters) == (25, 3) and merged.shape == (3, 16)
    pruned = [i for i in range(span) if i not in set(kept.tolist())]
    best_pruned = sorted(pruned, key=lambda i: -scores[i].item())[:recycled_count]
    assert set(centres.tolist()) <= set(best_pruned)
    empty_centres, empty = recycle_pruned_tokens(scores, hidden, torch.arange(span))
    assert empty_centres.numel() == 0 and empty.shape == (0, 16)


def test_layouts_put_clusters_after_the_kept_tokens_or_at_their_centres():
    hidden = torch.arange(10.0)[:, None].repeat(1, 2)
    kept, centres, merged = torch.tensor([1, 4, 9]), torch.tensor([6, 2]), -torch.ones(2, 2)
    slots, labels, sources, content = cluster_layout(kept, centres, merged, hidden, at_centres=False)
    assert slots.tolist() == [1, 4, 7, 8, 9]  # the kept columns and the last two pruned ones
    assert labels.tolist() == [1, 4, 9, -1, -1] and torch.equal(content[:3], hidden[kept])
    assert sources.tolist() == [1, 4, 9, 6, 2]  # what the record names: each cluster by its centre
    assert replacement_columns(slots[None], labels[None]).tolist() == [[2, 3, 4]]  # 9 moves down to slot 7
    slots, labels, sources, content = cluster_layout(kept, centres, merged, hidden, at_centres=True)
    assert slots.tolist() == [1, 2, 4, 6, 9] and labels.tolist() == [1, -1, 4, -1, 9]
    assert sources.tolist() == slots.tolist()
    assert replacement_columns(slots[None], labels[None]).tolist() == [[1, 3]]


def test_replacement_columns_are_padded_with_unmoved_ones():
    slots = torch.tensor([[1, 2, 3], [1, 2, 3]])
    labels = torch.tensor([[1, 2, -1], [1, -1, -1]])
    assert replacement_columns(slots, labels).tolist() == [[2, 0], [1, 2]]


def test_recycling_parameters_are_checked():
    with pytest.raises(ValueError, match=r"recycle_ratio must lie in \(0, 1\]"):
        SparseVLM(recycle_ratio=0.0)
    SparseVLM(stage_budgets=(300, 3, 2)).validate(32, 3)  # recycling never lets the span fall below 2
    with pytest.raises(ValueError, match="too short for 3 stages"):
        SparseVLM(stage_budgets=(300, 3, 2), recycling=False).validate(32, 3)


def _layer_io(model, ids, span, layer):
    """The output of ``layer - 1`` and the input of ``layer`` in one pruned forward."""
    captured = {}
    hooks = [model.model.layers[layer - 1].register_forward_hook(lambda m, a, out: captured.setdefault("out", out)),
             model.model.layers[layer].register_forward_pre_hook(lambda m, a: captured.setdefault("in", a[0]))]
    try:
        model(ids, prune_span=span, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    out = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    return out[0], captured["in"][0]


@pytest.mark.parametrize("positions", ["renumbered", "original"])
@torch.no_grad()
def test_engine_feeds_the_cluster_tokens_into_the_next_layer(stock_lm, positions):
    """Official: layer 2's output pruned, kept tokens then the cluster tokens enter layer 3; with original
    positions each cluster token sits at its centre's slot."""
    model = pruned_lm(stock_lm, pruning_method="sparsevlm",
                      pruning_params={"prune_layers": [2], "stage_budgets": [20], "positions": positions})
    ids = torch.randint(5, SMALL_LM["vocab_size"], (1, 90), generator=torch.Generator().manual_seed(1))
    out2, in3 = _layer_io(model, ids, (5, 75), 3)
    stage = model.model.last_pruning_record.stages[0]
    kept = torch.tensor(stage.metadata["kept_by_score"][0])
    centres, merged = recycle_pruned_tokens(stage.scores[0], out2[5:75], kept)
    assert stage.layer == 3 and len(kept) == 20 and stage.metadata["cluster_tokens"] == len(centres) == 2
    assert stage.metadata["cluster_centres"] == [centres.tolist()]
    expected = torch.cat([out2[5 + kept], merged])
    if positions == "original":
        order = torch.cat([kept, centres]).argsort()
        expected = expected[order]
        assert stage.kept_index[0].tolist() == (torch.cat([kept, centres]).sort().values + 5).tolist()
    torch.testing.assert_close(in3[5:27], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(in3[27:], out2[75:], atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_record_names_the_tokens_each_slot_holds_in_the_official_layout():
    """The record's ``kept_index`` after a recycling stage: the tokens kept by score plus each cluster's centre
    (``TokenSelection.sources``), never the label of a slot a kept token moved into."""
    from llava.model.builder import load_pretrained_model
    from llava.pruning.methods.sparsevlm import kept_by_score_positions
    from tests.conftest import llava_prompt, pixel_values

    llava = load_pretrained_model("tiny-random-llava", pruning_method="sparsevlm", visual_token_num=64)[1]
    llava(input_ids=llava_prompt(llava.config.image_token_id, 5, 9, seed=2), pixel_values=pixel_values(1, seed=2))
    record = llava.language_model.last_pruning_record
    by_score = kept_by_score_positions(record)
    labels = list(range(*(int(x) for x in record.span[0])))
    for stage, kept in zip(record.stages, by_score, strict=True):
        centres = [labels[c] for c in stage.metadata["cluster_centres"][0]]
        assert stage.kept_index[0].tolist() == kept + centres  # kept tokens in order, then the clusters
        labels = stage.kept_index[0].tolist()

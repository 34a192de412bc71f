"""CDPruner's default == the official CDPruner code, keep set for keep set.

The reference below is our own plain-torch transcription of the official selection
(Theia-4869/CDPruner at 9541616c40fcd5625de1cdb8ea6c33c129eb7864, ``llava/model/llava_arch.py``,
``encode_images``):

* l.148-153: the projected features are normalised in their own dtype, cast to float32 and multiplied:
  ``S`` = cosine similarity;
* l.156-160: relevance ``(m - min m + 1e-6) / (max m - min m)``, ``m`` the mean over the instruction's
  embeddings of minus the cosine similarity (the official embeddings are CLIP's; ours, and so the inputs
  given here, are the projected features and the LLM's instruction embeddings, our documented fallback);
* l.167: ``L = diag(r) S diag(r)``;
* l.170-181: greedy MAP in float32, batched over images (``B = 1`` here): argmax of the gains, the new
  Cholesky row ``(L_j - einsum(C_j, C)) / sqrt(gain_j)``, gains lowered by its square, the pick set to
  ``-inf``; ``T`` rounds with no stopping rule (a non-positive gain turns every gain into NaN, after which
  ``argmax`` repeats low indices);
* l.183-185: the picks, sorted, as a mask.

Our rule equals it whenever the official greedy keeps ``T`` distinct tokens (always with features of rank
at least ``T``); otherwise ours keeps the official set plus the lowest-indexed other tokens
(``llava.pruning.dpp``). (a) on random tensors, full rank and rank below ``T``; (b) end to end on the tiny
LLaVA, whose 64-wide projected features have rank below 128 and 192.
"""

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.model.pre_llm import projected_features
from llava.pruning.dpp import conditional_kernel, dpp_greedy_map, instruction_relevance
from tests.conftest import llava_prompt, pixel_values

SEEDS = (0, 1, 2, 3, 4)
BUDGETS = (192, 128, 64)
PREFIX, SUFFIX = 6, 12


def official_cdpruner(features: torch.Tensor, text: torch.Tensor, budget: int) -> set[int]:
    """Keep set of one image: ``features`` ``[N, D]`` projected, ``text`` ``[M, D]`` instruction embeddings."""
    unit = (features / features.norm(dim=-1, keepdim=True)).float()
    similarity = unit @ unit.T
    image_dirs = features.float() / features.float().norm(dim=-1, keepdim=True)
    text_dirs = text.float() / text.float().norm(dim=-1, keepdim=True)
    minus_cos = (-(image_dirs @ text_dirs.T)).mean(dim=-1)
    relevance = (minus_cos - minus_cos.min() + 1e-6) / (minus_cos.max() - minus_cos.min())
    kernel = (relevance[:, None] * similarity * relevance[None, :])[None]  # a batch of one image
    batch = torch.arange(1)
    rows = torch.zeros(budget, 1, kernel.shape[-1])
    gains = kernel.diagonal(dim1=1, dim2=2).clone()
    picks = []
    for i in range(budget):
        j = gains.argmax(dim=-1)
        picks.append(int(j))
        update = kernel[batch, j] - torch.einsum("tb,tbn->bn", rows[:i, batch, j], rows[:i])
        rows[i] = update / gains[batch, j].sqrt()[:, None]
        gains -= rows[i].square()
        gains[batch, j] = float("-inf")
    return set(picks)


def ours(features: torch.Tensor, text: torch.Tensor, budget: int) -> set[int]:
    kernel = conditional_kernel(features, instruction_relevance(features, text))
    kept = dpp_greedy_map(kernel, budget).tolist()
    assert len(set(kept)) == budget
    return set(kept)


def assert_official_keep_set(kept: set[int], official: set[int], size: int, budget: int) -> None:
    """``kept`` == ``official`` plus, where the official greedy ran out of gains, the lowest other indices."""
    fill = [i for i in range(size) if i not in official][: budget - len(official)]
    assert kept == official | set(fill)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_pure_rule_equals_the_official_rule_with_full_rank_features(seed, budget):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(576, 256, generator=generator)
    text = torch.randn(9, 256, generator=generator)
    official = official_cdpruner(features, text, budget)
    assert len(official) == budget and ours(features, text, budget) == official


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_pure_rule_past_the_feature_rank_keeps_the_official_set_and_fills_in_raster_order(seed, budget):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(576, 48, generator=generator)
    text = torch.randn(9, 48, generator=generator)
    official = official_cdpruner(features, text, budget)
    assert_official_keep_set(ours(features, text, budget), official, 576, budget)
    if budget >= 128:
        assert len(official) < budget  # the official greedy ran out of gains and repeated tokens here


@pytest.mark.parametrize("budget", BUDGETS)
@torch.no_grad()
def test_tiny_llava_keeps_what_the_official_code_keeps(budget):
    model = load_pretrained_model("tiny-random-llava", pruning_method="cdpruner", visual_token_num=budget)[1]
    for seed in SEEDS:
        ids = llava_prompt(model.config.image_token_id, PREFIX, SUFFIX, seed=seed)
        pixels = pixel_values(seed=seed)
        model(input_ids=ids, pixel_values=pixels)
        kept = model.language_model.last_pruning_record.stages[0].kept_index[0] - PREFIX
        instruction = model.get_input_embeddings()(ids)[0, PREFIX + 576 :]
        official = official_cdpruner(projected_features(model, pixels)[0], instruction, budget)
        assert_official_keep_set(set(kept.tolist()), official, 576, budget)

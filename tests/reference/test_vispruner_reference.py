"""VisPruner's default == the official VisPruner code, keep set for keep set.

The reference below is our own plain-torch transcription of the official selection
(Theia-4869/VisPruner at aefa01adc7c7ce6334e880c88225e90cede760d1):

* ``llava/model/multimodal_encoder/clip_encoder.py`` l.36-43, 64-66: the tower runs with hidden states and
  attentions; features = ``hidden_states[-2]`` without CLS, attention = ``attentions[-2]``, CLS row,
  patch columns;
* ``llava/model/llava_arch.py`` l.150-151: ``int(T * r)`` important tokens, ``T - int(T * r)`` diverse ones;
* l.154-157: mean over heads, descending ``argsort``; the first ones are the important tokens, the rest stay
  in that order;
* l.160-176: while more than the diverse count remain, drop ``min(8, excess)`` per round: split the list
  into ``[0::2]`` / ``[1::2]``, score the first half by its best cosine match in the second, sort the first
  half by descending score, drop its head, and continue with the rest of it followed by the second half;
* l.178-183: important + remaining tokens as a mask (raster order).

(a) on random tensors against ``vispruner_keep``; (b) end to end on the tiny LLaVA, the reference fed from
the vision tower as the official code reads it (attention probabilities from ``output_attentions``), our
method from the model's pre-LLM path.
"""

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.pruning.diversity import vispruner_keep
from tests.conftest import llava_prompt, pixel_values

SEEDS = (0, 1, 2, 3, 4)
BUDGETS = (192, 128, 64)
PREFIX, SUFFIX = 6, 12


def official_vispruner(
    cls_attention: torch.Tensor, features: torch.Tensor, budget: int, ratio: float = 0.5
) -> set[int]:
    """Keep set of one image: ``cls_attention`` ``[N]`` (mean over heads), ``features`` ``[N, C]``."""
    n_important = int(budget * ratio)
    n_diverse = budget - n_important
    by_attention = torch.argsort(cls_attention, descending=True)
    pool = by_attention[n_important:]
    normed = features / features.norm(dim=-1, keepdim=True)
    while n_diverse > 0:
        n_drop = min(8, len(pool) - n_diverse)
        if n_drop <= 0:
            break
        evens, odds = pool[0::2], pool[1::2]
        best_match = (normed[evens] @ normed[odds].T).max(dim=-1).values
        pool = torch.cat([evens[torch.argsort(best_match, descending=True)[n_drop:]], odds])
    kept = set(by_attention[:n_important].tolist())
    return kept | set(pool.tolist()) if n_diverse > 0 else kept


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_pure_rule_equals_the_official_rule_on_random_tensors(seed, budget):
    generator = torch.Generator().manual_seed(seed)
    attention = torch.rand(576, generator=generator, dtype=torch.float64).softmax(dim=0)
    features = torch.randn(576, 48, generator=generator, dtype=torch.float64)
    ours = vispruner_keep(attention, features, budget)
    assert len(ours) == budget and set(ours.tolist()) == official_vispruner(attention, features, budget)


@pytest.mark.parametrize(("budget", "ratio"), [(100, 0.3), (77, 0.5), (20, 0.0), (20, 1.0), (565, 0.995)])
def test_pure_rule_equals_the_official_rule_at_other_counts_and_ratios(budget, ratio):
    """Floor counts (``int(77 * 0.5) = 38``, ``int(100 * 0.3) = 29``), no diverse or no important tokens, and
    a first half shorter than the drop count (all of it dropped, as the official indexing does)."""
    generator = torch.Generator().manual_seed(budget)
    attention = torch.rand(576, generator=generator, dtype=torch.float64)
    features = torch.randn(576, 16, generator=generator, dtype=torch.float64)
    ours = vispruner_keep(attention, features, budget, ratio)
    assert set(ours.tolist()) == official_vispruner(attention, features, budget, ratio)


def _tower_inputs(model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cls_attention [N], features [N, C])`` of the official tower: the feature layer's attention
    probabilities from an eager pass with ``output_attentions``, its patch features from the model's own
    (SDPA) pass, the very numbers our path compares (eager rounding flips near-ties of the cascade)."""
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    tower.set_attn_implementation("eager")
    try:
        attentions = tower(pixels, output_attentions=True).attentions
    finally:
        tower.set_attn_implementation("sdpa")
    features = tower(pixels, output_hidden_states=True).hidden_states[layer]
    return attentions[layer][0, :, 0, 1:].mean(dim=0), features[0, 1:]


@pytest.mark.parametrize("budget", BUDGETS)
@torch.no_grad()
def test_tiny_llava_keeps_what_the_official_code_keeps(budget):
    model = load_pretrained_model("tiny-random-llava", pruning_method="vispruner", visual_token_num=budget)[1]
    for seed in SEEDS:
        ids = llava_prompt(model.config.image_token_id, PREFIX, SUFFIX, seed=seed)
        pixels = pixel_values(seed=seed)
        model(input_ids=ids, pixel_values=pixels)
        kept = model.language_model.last_pruning_record.stages[0].kept_index[0] - PREFIX
        assert set(kept.tolist()) == official_vispruner(*_tower_inputs(model, pixels), budget), f"seed {seed}"

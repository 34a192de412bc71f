"""FastV's default == the official FastV code, keep set for keep set, logits for logits.

Our own plain-torch transcription of the official in-place rule (pkunlp-icler/FastV at
d1659729b5bf1be225e99ee15783deeea80f63b1, ``src/transformers/src/transformers/models/llama/modeling_llama.py``):

* l.736-740: before layer ``K`` (``idx == AGG_LAYER``) take the attention layer ``K - 1`` computed
  (``layer_outputs[1]``), mean over heads, the last token's row;
* l.742-746: restrict it to the image tokens ``[SYS_LENGTH, SYS_LENGTH + IMAGE_TOKEN_LENGTH)`` and keep the
  ``topk(ATTENTION_RANK)``;
* l.748-756: keep ``prefix + kept image tokens + suffix`` in ascending order; ``position_ids = keep_indexs``:
  kept tokens keep their original positions.

Run with the stock decoder layers of the same model on the same input embeddings as our engine.
"""

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.pruning.registry import plan_method
from tests.conftest import llava_prompt, pixel_values
from tests.reference.decoder import captured_embeddings, last_token_image_scores

SEEDS = (0, 1, 2, 3, 4)
BUDGETS = (192, 128, 64)


@torch.no_grad()
def official_fastv(lm, embeds: torch.Tensor, start: int, span: int, agg_layer: int, keep: int):
    """``(kept original indices, last-token hidden state)`` of the official in-place rule on one prompt."""
    hidden = embeds
    positions = torch.arange(embeds.shape[1])[None]
    kept = None
    for i, layer in enumerate(lm.layers):
        if i == agg_layer - 1:
            scores = last_token_image_scores(layer, hidden, positions, lm.rotary_emb, start, span)
            top = scores.topk(keep).indices + start
            kept = top.sort().values
        if i == agg_layer:
            index = torch.cat([torch.arange(start), kept, torch.arange(start + span, hidden.shape[1])])
            hidden, positions = hidden[:, index], index[None]
        cos, sin = lm.rotary_emb(hidden, position_ids=positions)
        hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=positions)
    return kept, lm.norm(hidden)[0, -1]


@pytest.fixture(scope="module")
def llava():
    return load_pretrained_model("tiny-random-llava")[1]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_fastv_keeps_what_the_official_code_keeps(llava, seed, budget):
    prefix, suffix = 4 + seed, 6 + 3 * seed
    ids = llava_prompt(llava.config.image_token_id, prefix, suffix, seed=seed)
    pixels = pixel_values(1, seed=seed)
    method = plan_method("fastv", budget, 32, 576)
    llava.set_pruning_method(method)
    with torch.no_grad():
        ours = llava(input_ids=ids, pixel_values=pixels, output_hidden_states=True)
    (stage,) = llava.language_model.last_pruning_record.stages
    llava.set_pruning_method(None)
    kept, last_hidden = official_fastv(
        llava.language_model, captured_embeddings(llava, ids, pixels), prefix, 576, method.agg_layer, method.keep
    )
    assert stage.layer == method.agg_layer
    assert stage.kept_index[0].tolist() == kept.tolist()
    torch.testing.assert_close(ours.hidden_states[-1][0, -1], last_hidden, atol=1e-5, rtol=1e-4)

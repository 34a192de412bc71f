"""PDrop's default == the official PyramidDrop code, keep set for keep set, logits for logits.

The reference below is our own plain-torch transcription of the official inference rule
(Cooperx521/PyramidDrop at 6444f304aee4b7edcb022839fb9e8cd07859704a, ``llava/model/modeling_llama_pdrop.py``):

* ``pdrop_forward`` l.1220-1223: after running decoder layer ``i``, if ``i + 1`` is in ``layer_list`` the
  sequence is ranked and dropped before layer ``i + 1`` (prefill only);
* ``pdrop_rank_drop`` l.1306-1307: stage ``s`` keeps ``int(S * ratio[s + 1])`` of the original ``S`` image
  tokens (``ratio`` is the script's list with ``1.0`` inserted in front, ``model_vqa_loader.py`` l.96);
* l.1322-1342: q and k of layer ``i + 1`` from its ``input_layernorm`` of the current hidden states, RoPE at the
  current position ids;
* l.1390-1401: the query is the last prompt token; softmax (float32) over its causal row, mean over heads,
  restricted to the current image tokens;
* l.1405-1410: ``topk`` of those scores, sorted ascending, replaces the image tokens;
* l.1431-1446: the new sequence gets position ids ``0..n-1``;
* l.1258-1268: a decode step's position id drops by each stage's removed count from that stage's layer on.

It is run with the stock decoder layers of the same model, on the same input embeddings as our engine.
"""

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.pruning.registry import build_method, plan_method
from tests.conftest import llava_prompt, pixel_values
from tests.reference.decoder import captured_embeddings, last_token_image_scores

SEEDS = (0, 1, 2, 3, 4)
BUDGETS = (192, 128, 64)


def official_pdrop_keep_lengths(span: int, ratios: list[float]) -> list[int]:
    """``int(span * ratio)`` per stage, as ``pdrop_rank_drop`` counts them."""
    return [int(span * ratio) for ratio in ratios]


@torch.no_grad()
def official_pdrop(lm, embeds: torch.Tensor, start: int, span: int, layers: list[int], keeps: list[int]):
    """``(kept original indices per stage, last-token hidden state)`` of the official rule on one prompt that
    keeps ``keeps[s]`` image tokens before ``layers[s]``."""
    hidden = embeds
    original = torch.arange(embeds.shape[1])
    positions = original[None]
    live = span
    kept_per_stage = []
    for i, layer in enumerate(lm.layers):
        if i in layers:
            keep = keeps[layers.index(i)]
            scores = last_token_image_scores(layer, hidden, positions, lm.rotary_emb, start, live)
            top = scores.topk(keep).indices.sort().values + start
            index = torch.cat([torch.arange(start), top, torch.arange(start + live, hidden.shape[1])])
            hidden, original = hidden[:, index], original[index]
            positions = torch.arange(hidden.shape[1])[None]
            live = keep
            kept_per_stage.append(original[start : start + live])
        cos, sin = lm.rotary_emb(hidden, position_ids=positions)
        hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=positions)
    return kept_per_stage, lm.norm(hidden)[0, -1]


@pytest.fixture(scope="module")
def llava():
    return load_pretrained_model("tiny-random-llava")[1]


def assert_engine_equals_official(llava, method, ids, pixels, prefix: int) -> None:
    llava.set_pruning_method(method)
    lm = llava.language_model
    with torch.no_grad():
        ours = llava(input_ids=ids, pixel_values=pixels, output_hidden_states=True)
    record = lm.last_pruning_record
    llava.set_pruning_method(None)
    embeds = captured_embeddings(llava, ids, pixels)
    layers, keeps = (list(column) for column in zip(*method.schedule(576), strict=True))
    official_keeps = official_pdrop_keep_lengths(576, list(method.ratios))
    assert keeps == [max(1, keep) for keep in official_keeps]  # the one edge: a stage of int() == 0 keeps 1
    kept, last_hidden = official_pdrop(lm, embeds, prefix, 576, layers, keeps)
    assert [stage.layer for stage in record.stages] == layers
    for stage, official in zip(record.stages, kept, strict=True):
        assert stage.kept_index[0].tolist() == official.tolist()
    torch.testing.assert_close(ours.hidden_states[-1][0, -1], last_hidden, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_pdrop_budget_keeps_what_the_official_code_keeps(llava, seed, budget):
    prefix, suffix = 5 + seed, 7 + 2 * seed
    ids = llava_prompt(llava.config.image_token_id, prefix, suffix, seed=seed)
    method = plan_method("pdrop", budget, 32, 576)
    assert_engine_equals_official(llava, method, ids, pixel_values(1, seed=seed), prefix)


def test_pdrop_default_is_the_official_script(llava):
    method = build_method("pdrop", {})
    assert method.schedule(576) == [(8, 288), (16, 144), (24, 72)]
    ids = llava_prompt(llava.config.image_token_id, 6, 9, seed=11)
    assert_engine_equals_official(llava, method, ids, pixel_values(1, seed=11), 6)


def test_pdrop_counts_floor_as_the_official_code():
    method = build_method("pdrop", {"layer_list": [8, 16], "ratio_list": [0.3, 0.1]})
    assert [keep for _, keep in method.schedule(576)] == official_pdrop_keep_lengths(576, [0.3, 0.1]) == [172, 57]
    rounded = build_method("pdrop", {"layer_list": [8, 16], "ratio_list": [0.3, 0.1], "count_rounding": "round"})
    assert [keep for _, keep in rounded.schedule(576)] == [173, 58]


def test_original_positions_option_differs_from_official(llava):
    """``positions="original"`` (ours) keeps RoPE positions: the last stages pick other tokens."""
    ids = llava_prompt(llava.config.image_token_id, 5, 9, seed=3)
    pixels = pixel_values(1, seed=3)
    records = {}
    for positions in ("renumbered", "original"):
        llava.set_pruning_method(plan_method("pdrop", 128, 32, 576, {"positions": positions}))
        with torch.no_grad():
            llava(input_ids=ids, pixel_values=pixels)
        records[positions] = [s.kept_index[0].tolist() for s in llava.language_model.last_pruning_record.stages]
    llava.set_pruning_method(None)
    assert records["renumbered"][0] == records["original"][0]  # stage 1 scores before any renumbering
    assert records["renumbered"][1:] != records["original"][1:]


def test_unknown_positions_is_an_error():
    with pytest.raises(ValueError, match="valid: original, renumbered"):
        build_method("pdrop", {"positions": "absolute"})


@pytest.mark.real_model
def test_pdrop_keeps_what_the_official_code_keeps_on_smollm2(smollm2_passkeys):
    """SmolLM2-135M with the passkey context as the span: trained attention, 30 layers, GQA."""
    model, prompts = smollm2_passkeys
    lm = model.model
    for input_ids, (start, end) in prompts:
        method = plan_method("pdrop", (end - start) / 4, lm.config.num_hidden_layers, end - start)
        lm.set_pruning_method(method)
        with torch.no_grad():
            ours = model(input_ids=input_ids, prune_span=(start, end), output_hidden_states=True)
        record = lm.last_pruning_record
        lm.set_pruning_method(None)
        layers, keeps = (list(column) for column in zip(*method.schedule(end - start), strict=True))
        kept, last_hidden = official_pdrop(lm, lm.embed_tokens(input_ids), start, end - start, layers, keeps)
        for stage, official in zip(record.stages, kept, strict=True):
            assert stage.kept_index[0].tolist() == official.tolist()
        torch.testing.assert_close(ours.hidden_states[-1][0, -1], last_hidden, atol=1e-4, rtol=1e-4)

"""SparseVLM's default == the official SparseVLM v1.5 code (and ``version="v2"`` == SparseVLM+), keep set for keep set.

The reference below is our own plain-torch transcription of the official inference rule, Gumpest/SparseVLMs,
``llava/model/language_model/`` (MSL = ``modelling_sparse_llama.py``):

v1.5 (branch ``v1.5`` at 734d9003879689713a132b83297dfad060a5c9af):

* MSL l.199-204: raters = the text tokens (everything after the image) whose relevance, the softmax over the
  text of each visual embedding's dot products with the text embeddings (layer-0 inputs), averaged over the
  visual tokens, is above its mean;
* MSL l.223-265 with l.564-578: a layer of ``pruning_loc`` (2, 6, 15) runs on the whole current sequence and
  hands back ``softmax(q k^T / sqrt(d) + causal)`` of its own q/k (RoPE at the current position ids);
* ``score.py`` l.21-35: mean over heads, rows = raters, columns = the current visual tokens, mean over raters;
  ``topk(min(budget, visual - 1))`` stays;
* MSL l.279-296 and ``utils.py`` l.247-309: ``int(0.3 p) + 1`` of the ``p`` pruned tokens (best scores first)
  of the layer's *output* are clustered by density peaks into ``int(recycled / 10) + 1`` groups and merged
  (sum over members / (members + 1e-6)); the official 1e-6 density noise is left out (random);
* MSL l.298-313: next sequence = prefix, kept visual tokens, cluster tokens, text; position ids ``0..n-1``.

SparseVLM+ (branch ``v2.0`` at 9e1f649ef6a78878e2b10d1d6f49ecd7f4d84094, ``USE_VERSION=2_0``): MSL l.242-251
divides the probabilities by the all-ones RoPE logit, l.256-257 with ``score.py`` l.48-55 keeps the 14 heads
of most rater -> visual mass, l.273-274 turns recycling off, l.311-312 keeps the original position ids.

GQA (the tiny model, SmolLM2) repeats the key heads, as the attention itself does; the official
``LlamaDynamicvitFlashAttention2`` logits path was written for LLaVA-1.5 (no GQA).
"""

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from llava.model.builder import load_pretrained_model
from llava.pruning.methods.base import PruneStep
from llava.pruning.methods.sparsevlm import STAGE_BUDGET_PRESETS, SparseVLM, kept_by_score_positions
from llava.pruning.registry import plan_method
from tests.conftest import llava_prompt, pixel_values

SEEDS = (0, 1, 2)
BUDGETS = (192, 128, 64)


# ----- the official rule, transcribed -------------------------------------------------------------------
def official_raters(embeds: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Offsets after the image of the rater tokens (``embeds`` ``[N, d]``, image ``[start, end)``)."""
    relation = torch.softmax(embeds[start:end] @ embeds[end:].T, dim=1).mean(dim=0)
    return torch.where(relation > relation.mean())[0]


def official_relation(probs: torch.Tensor, rows: torch.Tensor, start: int, live: int) -> torch.Tensor:
    """Score of each live visual token: ``probs`` ``[H, N, N]`` averaged over heads, then over rater rows."""
    return probs.mean(dim=0)[rows][:, start : start + live].mean(dim=0)


def official_v2_relation(
    probs: torch.Tensor, rows: torch.Tensor, start: int, live: int, cos: torch.Tensor, sin: torch.Tensor, heads: int = 14
) -> torch.Tensor:
    """SparseVLM+: probabilities over the all-ones RoPE logit, the ``heads`` heads of most rater mass, then as v1.5."""
    ones = torch.ones_like(cos)
    half = ones.shape[-1] // 2
    rotated = ones * cos + torch.cat([-ones[:, half:], ones[:, :half]], dim=-1) * sin  # [N, head_dim]
    corrected = probs / (rotated @ rotated.T / math.sqrt(rotated.shape[-1]))
    mass = corrected[:, rows][:, :, start : start + live].sum(dim=(1, 2))
    top = mass.topk(min(heads, mass.numel())).indices
    return official_relation(corrected[top], rows, start, live)


def official_keep(relation: torch.Tensor, budget: int) -> torch.Tensor:
    """Visual columns kept by score, ascending (``topk(min(budget, visual - 1))``)."""
    return relation.topk(min(budget, relation.numel() - 1)).indices.sort().values


def official_cluster_and_merge(x: torch.Tensor, c: int) -> torch.Tensor:
    """``[c, d]`` cluster tokens of ``x`` ``[n, d]``: density peaks with ``k = c`` (self included), no noise."""
    n = x.shape[0]
    xd = x.double()
    dist = torch.stack([(xd - xd[i]).norm(dim=-1) for i in range(n)]) / math.sqrt(x.shape[1])
    rho = torch.exp(-(dist.sort(dim=1).values[:, :c] ** 2).mean(dim=1))
    largest = dist.max()
    delta = torch.stack([dist[i][rho > rho[i]].min() if (rho > rho[i]).any() else largest for i in range(n)])
    centres = torch.argsort(rho * delta, descending=True, stable=True)[:c]
    owner = dist[centres].argmin(dim=0)
    owner[centres] = torch.arange(c)
    return torch.stack([x[owner == k].sum(dim=0) / ((owner == k).sum() + 1e-6) for k in range(c)])


def official_recycle(relation: torch.Tensor, kept: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Cluster tokens of the pruned visual tokens: ``out`` ``[live, d]`` is the scoring layer's output."""
    pruned = torch.tensor([i for i in range(relation.numel()) if i not in set(kept.tolist())])
    recycled = int(pruned.numel() * 0.3) + 1
    best = pruned[relation[pruned].sort(descending=True, stable=True).indices[:recycled]]
    return official_cluster_and_merge(out[best], int(recycled / 10) + 1)


def layer_probs(layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``[H, N, N]`` causal softmax attention of ``layer`` on ``hidden`` ``[1, N, d]`` (its own q/k, RoPE)."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x).view(1, x.shape[1], -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, x.shape[1], -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    logits = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
    causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(dim=-1)[0]


@torch.no_grad()
def official_sparsevlm(lm, embeds: torch.Tensor, start: int, end: int, budgets, version: str = "v1.5"):
    """``(kept visual columns per stage, their positions in the input, last hidden state)`` of the official
    forward on one prompt (a kept cluster token has no input position: left out)."""
    hidden, positions = embeds, torch.arange(embeds.shape[1])[None]
    source = torch.arange(embeds.shape[1])  # input position of each current token, -1 for a cluster token
    rater_offsets = official_raters(embeds[0], start, end)
    live, kept_per_stage, kept_sources = end - start, [], []
    for i, layer in enumerate(lm.layers):
        cos, sin = lm.rotary_emb(hidden, position_ids=positions)
        out = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), position_ids=positions)
        if i in (2, 6, 15):
            probs = layer_probs(layer, hidden, cos, sin)
            rows = start + live + rater_offsets
            relation = (
                official_v2_relation(probs, rows, start, live, cos[0], sin[0])
                if version == "v2"
                else official_relation(probs, rows, start, live)
            )
            kept = official_keep(relation, budgets[len(kept_per_stage)])
            kept_per_stage.append(kept)
            kept_sources.append([p for p in source[start + kept].tolist() if p >= 0])
            visual = out[0, start : start + live]
            clusters = official_recycle(relation, kept, visual) if version == "v1.5" else visual[:0]
            source = torch.cat([source[:start], source[start + kept], torch.full((clusters.shape[0],), -1),
                                source[start + live :]])
            out = torch.cat([out[0, :start], visual[kept], clusters, out[0, start + live :]])[None]
            positions = (
                torch.arange(out.shape[1])[None]
                if version == "v1.5"
                else torch.cat([positions[0, :start], positions[0, start + kept], positions[0, start + live :]])[None]
            )
            live = kept.numel() + clusters.shape[0]
        hidden = out
    return kept_per_stage, kept_sources, lm.norm(hidden)[0, -1]


# ----- (a) the same tensors -------------------------------------------------------------------------------
def synthetic_step(seed: int, stage: int, prefix: int = 4, span: int = 120, text: int = 9, heads: int = 4, dim: int = 16):
    """A ``PruneStep`` over random tensors and the full attention map behind its ``attention``."""
    g = torch.Generator().manual_seed(seed)
    n = prefix + span + text
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    probs = torch.randn(heads, n, n, generator=g).mul(3).masked_fill(~causal, float("-inf")).softmax(dim=-1)
    positions = torch.arange(n, dtype=torch.float32) + 7 * seed
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim)
    angles = torch.cat([positions[:, None] * inv_freq] * 2, dim=-1)
    step = PruneStep(
        layer=3, stage=stage,
        span_index=torch.arange(prefix, prefix + span)[None], span_valid=torch.ones(1, span, dtype=torch.bool),
        query_index=torch.tensor([n - 1]), hidden_states=torch.randn(1, n, 32, generator=g),
        attention=lambda layer, rows: probs[None, :, rows[0]],
        original_index=torch.arange(n)[None], original_span=torch.tensor([[prefix, prefix + span]]),
        input_embeddings=torch.randn(1, n, 32, generator=g), rope=(angles.cos()[None], angles.sin()[None]),
    )
    return step, probs


@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize("seed", SEEDS)
def test_selection_and_cluster_tokens_equal_the_official_rule_on_the_same_tensors(seed, stage):
    step, probs = synthetic_step(seed, stage)
    prefix, span = 4, 120
    method = SparseVLM(stage_budgets=(70, 40, 12))
    rows = prefix + span + official_raters(step.input_embeddings[0], prefix, prefix + span)
    relation = official_relation(probs, rows, prefix, span)
    kept = official_keep(relation, method.stage_budgets[stage])
    clusters = official_recycle(relation, kept, step.hidden_states[0, prefix : prefix + span])
    selection = method.select(step, kept.numel() + clusters.shape[0])
    assert selection.metadata["kept_by_score"] == [kept.tolist()]
    # the next layer's span: the slots' own hidden states with the replacements written in
    span_hidden = step.hidden_states[0, prefix : prefix + span]
    ours = span_hidden[selection.indices[0]].clone()
    columns, merged = selection.replacement
    ours[columns[0]] = merged[0]
    torch.testing.assert_close(ours, torch.cat([span_hidden[kept], clusters]), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_v2_selection_equals_sparsevlm_plus_on_the_same_tensors(seed):
    step, probs = synthetic_step(seed, 0)
    prefix, span = 4, 120
    method = SparseVLM(version="v2", v2_heads=2, stage_budgets=(50, 20, 5))
    rows = prefix + span + official_raters(step.input_embeddings[0], prefix, prefix + span)
    cos, sin = step.rope
    relation = official_v2_relation(probs, rows, prefix, span, cos[0], sin[0], heads=2)
    selection = method.select(step, 50)
    assert selection.replacement is None and selection.indices.tolist() == [official_keep(relation, 50).tolist()]


@pytest.mark.parametrize("seed", SEEDS)
def test_density_peak_clusters_equal_the_official_cluster_and_merge(seed):
    from llava.pruning.recycling import density_peak_clusters, merge_clusters

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 24, generator=g) + 4 * torch.randn(4, 24, generator=g)[torch.randint(0, 4, (40,), generator=g)]
    for c in (1, 3, 5):
        _, assignment = density_peak_clusters(x, c)
        torch.testing.assert_close(merge_clusters(x, assignment, c), official_cluster_and_merge(x, c))


def test_recycling_counts_and_stage_sizes_are_the_official_ones():
    counts = SparseVLM().stage_counts(576)  # 192 preset: 300, 200, 110 kept by score
    assert counts == [(300, 9), (200, 4), (110, 3)]  # 276 pruned -> 83 recycled -> 9 clusters, ...
    assert SparseVLM(stage_budgets=STAGE_BUDGET_PRESETS["v1.5"][64]).schedule(576) == [(3, 82), (7, 32), (16, 18)]
    assert SparseVLM(stage_budgets=(600, 600, 600)).stage_counts(576)[0] == (575, 1)  # min(budget, live - 1)
    assert SparseVLM(version="v2").schedule(576) == [(3, 300), (7, 200), (16, 118)]


# ----- (b) end to end on the tiny LLaVA -------------------------------------------------------------------
def captured_embeddings(llava, ids, pixels) -> torch.Tensor:
    """The language model's input embeddings of one LLaVA forward (image features merged)."""
    captured = {}
    handle = llava.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            llava(input_ids=ids, pixel_values=pixels)
    finally:
        handle.remove()
    return captured["embeds"]


@pytest.fixture(scope="module")
def llava():
    return load_pretrained_model("tiny-random-llava")[1]


def assert_engine_equals_official(model, lm, method, inputs: dict, embeds, start: int, end: int) -> None:
    lm.set_pruning_method(method)
    try:
        with torch.no_grad():
            ours = model(**inputs, output_hidden_states=True)
        record = lm.last_pruning_record
    finally:
        lm.set_pruning_method(None)
    kept, sources, last_hidden = official_sparsevlm(lm, embeds, start, end, method.stage_budgets, method.version)
    assert [stage.layer for stage in record.stages] == [3, 7, 16]
    for stage, official in zip(record.stages, kept, strict=True):
        assert stage.metadata["kept_by_score"] == [official.tolist()]
    assert kept_by_score_positions(record) == sources
    torch.testing.assert_close(ours.hidden_states[-1][0, -1], last_hidden, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("version", ["v1.5", "v2"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_budget_keeps_what_the_official_code_keeps(llava, seed, budget, version):
    prefix, suffix = 5 + seed, 7 + 2 * seed
    ids = llava_prompt(llava.config.image_token_id, prefix, suffix, seed=seed)
    pixels = pixel_values(1, seed=seed)
    method = plan_method("sparsevlm", budget, 32, 576, {"version": version})
    assert method.stage_budgets == STAGE_BUDGET_PRESETS[version][budget]
    embeds = captured_embeddings(llava, ids, pixels)
    inputs = {"input_ids": ids, "pixel_values": pixels}
    assert_engine_equals_official(llava, llava.language_model, method, inputs, embeds, prefix, prefix + 576)


def test_former_defaults_are_options_that_change_the_keep_set(llava):
    """``score_before_layer``, ``recycling=False`` and ``positions="original"`` each keep another set."""
    ids = llava_prompt(llava.config.image_token_id, 6, 9, seed=5)
    pixels = pixel_values(1, seed=5)
    kept = {}
    for label, params in {"official": {}, "before": {"score_before_layer": True}, "no_recycling": {"recycling": False},
                          "original": {"positions": "original"}}.items():
        llava.set_pruning_method(plan_method("sparsevlm", 128, 32, 576, params))
        with torch.no_grad():
            llava(input_ids=ids, pixel_values=pixels)
        record = llava.language_model.last_pruning_record
        kept[label] = [s.metadata["kept_by_score"] for s in record.stages]
        if label in ("no_recycling", "original"):  # no kept token moves: the slot labels are the tokens
            for stage, positions in zip(record.stages, kept_by_score_positions(record), strict=True):
                assert set(positions) <= set(stage.kept_index[0].tolist())
    llava.set_pruning_method(None)
    assert kept["no_recycling"][0] == kept["original"][0] == kept["official"][0]  # same first stage
    for label in ("before", "no_recycling", "original"):
        assert kept[label] != kept["official"], label


# ----- (c) the real model ---------------------------------------------------------------------------------
@pytest.mark.real_model
def test_sparsevlm_keeps_what_the_official_code_keeps_on_smollm2(smollm2_passkeys):
    """SmolLM2-135M with the passkey context as the span: trained attention, 30 layers, GQA."""
    model, prompts = smollm2_passkeys
    lm = model.model
    for input_ids, (start, end) in prompts:
        for version in ("v1.5", "v2"):
            inputs = {"input_ids": input_ids, "prune_span": (start, end)}
            embeds = lm.embed_tokens(input_ids)
            assert_engine_equals_official(model, lm, SparseVLM(version=version), inputs, embeds, start, end)

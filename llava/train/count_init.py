"""Structured initialisation of the shapes VLM's counting circuit: how many X, and which colour is most common.

An object covers 1 to 9 patches, so attention spread over an object's patches weighs it by its size: the
shipped model (lookup circuit only) counted at 58 %. The tower stage also learns which patch holds each
object's centre (``llava.shapes.scene.centre_patch``), and the circuit attends to those:

* **Projector.** One more calibrated read-out unit (``calibrated_readout``) writes the centre flag into
  ``CENTRE``.
* **Layer 3, head 0**, from every position: scores, in RoPE's slow dimensions,
  ``s(BOS) = g_s + ln K``, ``s(patch) = g_c [centre] + g_m [code matches the question's colour / shape]``
  with ``g_c = g_m = g_s / 2`` and ``K = BOS_COUNT_WEIGHT``; a word ``most`` or ``common`` copied to the answer position (``MOST``, by the
  gather head of layer 1) adds ``g_s / 2`` to every centre patch. So "how many red shapes?" gives each
  centre of a red object ``1 / (n + K)`` of the attention and BOS ``K / (n + K)`` (a red non-centre patch,
  or another centre, scores ``g_s / 2``: ``e^{-g_s / 2}`` of a centre's weight), and "which colour is most
  common?" the same over every object's centre.
* **Values.** BOS's ``SINK`` flag goes to ``COUNT``: ``K / (n + K)`` with ``n`` objects counted (the MLPs
  learn to read the digit from it); the centres' colour codes go to ``RETRIEVED``'s colour entries, the
  colour histogram the LM head reads for most-common.

Every weight stays trainable; the ``objects`` hop loss of ``llava.train.train_shapes_vlm`` supervises the
same head with the same target (BOS and the counted centres, uniform).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from llava.shapes.scene import COLOURS
from llava.shapes.training_data import BOS_COUNT_WEIGHT, KEY_WORDS_OF_MOST_COMMON
from llava.train.lookup_init import CODE_WIDTH, COLOUR, calibrated_readout, code_dims, copy_through_head, slow_rope_dims
from llava.train.option_init import OPTION_WIDTH, option_dims, token_id


def count_dims(hidden_size: int) -> dict[str, list[int]]:
    """Residual dimensions of the counting circuit: after the option circuit's, before the lookup's codes."""
    start = OPTION_WIDTH
    if hidden_size < 2 * CODE_WIDTH + start + 3:
        raise ValueError(f"the counting circuit needs hidden_size >= {2 * CODE_WIDTH + start + 3}, got {hidden_size}")
    return {"centre": [start], "count": [start + 1], "most": [start + 2]}


@torch.no_grad()
def init_count_circuit(
    model: LlavaForConditionalGeneration, centre_head: nn.Linear, features: torch.Tensor, centre_labels: torch.Tensor,
    tokenizer, gather_layer: int = 1, layer: int = 3, head: int = 0, sink_gain: float = 14.0,
) -> None:
    """Write the counting circuit into ``model`` (module docstring); call after ``init_lookup_circuit`` and
    ``init_option_circuit``. ``centre_head``: the tower stage's centre read-out (``[1, D]``); ``features``
    ``[N, D]`` tower patch features with ``centre_labels`` ``[N]`` (1 at centre patches)."""
    lm = model.model.language_model
    hidden = lm.config.hidden_size
    query, retrieved = code_dims(hidden)
    flags, dims = option_dims(hidden), count_dims(hidden)
    # projector: one more unit, the calibrated centre read-out -> CENTRE
    projector = model.model.multi_modal_projector
    unit = projector.linear_1.out_features - CODE_WIDTH - 1
    weight = torch.cat([-centre_head.weight, centre_head.weight])  # two classes: not centre, centre
    bias = torch.cat([-centre_head.bias, centre_head.bias])
    # the other side of a centre patch is mostly background, but its own object's other patches are close:
    # threshold against the 99th percentile of the non-centre patches (the lookup's read-outs use 99.5)
    weight, bias = calibrated_readout(weight, bias, features, centre_labels.long(), quantile=0.99)
    projector.linear_1.weight[unit], projector.linear_1.bias[unit] = weight[1], bias[1]
    projector.linear_2.weight[dims["centre"]] = 0.0
    projector.linear_2.weight[:, unit] = 0.0
    projector.linear_2.weight[dims["centre"], unit] = 1.0
    projector.linear_2.bias[dims["centre"]] = 0.0
    # MOST: the question words ride on the gather head's copy (its spare value dims)
    embed = lm.embed_tokens.weight
    for word in KEY_WORDS_OF_MOST_COMMON:
        embed[token_id(tokenizer, word), dims["most"]] = 1.0
    gather = lm.layers[gather_layer].self_attn
    spare = [gather.head_dim - 1]
    kappa = lambda active: math.sqrt(hidden / active)
    copy_through_head(gather, dims["most"], dims["most"], spare, 0, gain=1.0 / kappa(2))
    # layer 3 head 0: codes, centre, most and BOS terms in slow RoPE dims
    attention = lm.layers[layer].self_attn
    scaling = attention.head_dim**-0.5
    codes = list(range(COLOUR, CODE_WIDTH))
    slow = slow_rope_dims(lm.rotary_emb.inv_freq, span=1024, count=len(codes) + 3)
    code_slots, centre_slot, most_slot, sink_slot = slow[: len(codes)], slow[-3], slow[-2], slow[-1]
    q_rows = head * attention.head_dim
    attention.q_proj.weight[q_rows : q_rows + attention.head_dim] = 0.0
    attention.k_proj.weight[slow] = 0.0
    # normalised entries: the answer position holds ~3 active entries (COLON, CONSTANT, a code), BOS 2
    # (SINK, CONSTANT), an object patch 5 (row, column, colour, shape, centre)
    query_amplitude = lambda score: math.sqrt(score / scaling) / kappa(3)
    key_amplitude = lambda score, active: math.sqrt(score / scaling) / kappa(active)
    half = sink_gain / 2
    for slot, code in zip(code_slots, codes, strict=True):
        attention.q_proj.weight[q_rows + slot, query[code]] = query_amplitude(half)
        attention.k_proj.weight[slot, query[code]] = key_amplitude(half, 5)
    attention.q_proj.weight[q_rows + centre_slot, flags["constant"]] = query_amplitude(half)
    attention.k_proj.weight[centre_slot, dims["centre"]] = key_amplitude(half, 5)
    attention.q_proj.weight[q_rows + most_slot, dims["most"]] = query_amplitude(half)
    attention.k_proj.weight[most_slot, dims["centre"]] = key_amplitude(half, 5)
    bos_score = sink_gain + math.log(BOS_COUNT_WEIGHT)  # BOS weighs as BOS_COUNT_WEIGHT centres
    attention.q_proj.weight[q_rows + sink_slot, flags["constant"]] = query_amplitude(bos_score)
    attention.k_proj.weight[sink_slot, flags["sink"]] = key_amplitude(bos_score, 2)
    colour_codes = [query[COLOUR + i] for i in range(len(COLOURS))]
    copy_through_head(attention, flags["sink"] + colour_codes, dims["count"] + [retrieved[COLOUR + i] for i in range(len(COLOURS))],
                      list(range(1 + len(COLOURS))), head, gain=1.0 / kappa(3))

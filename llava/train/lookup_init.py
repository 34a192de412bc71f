"""Structured initialisation of the shapes VLM's lookup circuit, from the trained tower's read-outs.

A small LM trained from scratch on a CPU found "attend to the patches of the cell the question names"
too slowly (docs/shapes_vlm.md: the supervised head's mass on the asked cell plateaued at 0.17-0.29 for
1100 steps). The circuit is simple to write down, so the LM starts with it and training refines it:

* **Codes.** The residual stream's last 22 dimensions (``QUERY``) hold one-hots of what a token names or
  shows: the cell's row (6) and column (6), the object's colour (6) and shape (4). Dimensions 20-41
  (``RETRIEVED``) receive the code that layer 2 head 0 reads from the image.
* **Projector.** ``linear_1`` computes the tower's linear read-outs of row, column, colour and shape
  (stage 1 trained them), centred and thresholded so that after the GELU only the patch's own classes
  are positive; ``linear_2`` copies them into ``QUERY``.
* **Embeddings.** Cell words ("b4") write their row and column one-hots into ``QUERY``; colour and shape
  words (and plurals) their colour or shape one-hot.
* **Layer 1, head 0** (trained by the hop loss to attend from the answer position to the question's key
  words): value / output copy ``QUERY`` to ``QUERY``, so the answer position carries the asked code.
* **Layer 2, head 0**: query and key compare ``QUERY`` in the head dimensions RoPE barely turns over the
  image span (``slow_rope_dims``), so a patch scores ``gain`` per matching coordinate (row, column,
  colour, shape); value / output copy the matched patches' ``QUERY`` into ``RETRIEVED``.
* **LM head.** Colour and shape words read their one-hot in ``RETRIEVED``.

Every weight stays trainable; this is where training starts, not a constraint.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from llava.shapes.questions import PLURALS, cell_name
from llava.shapes.scene import COLOURS, GRID, SHAPES

CODE_WIDTH = 2 * GRID + len(COLOURS) + len(SHAPES)  # 22
ROW, COL = 0, GRID
COLOUR, SHAPE = 2 * GRID, 2 * GRID + len(COLOURS)


def code_dims(hidden_size: int) -> tuple[list[int], list[int]]:
    """Residual dimensions of ``QUERY`` (the last ``CODE_WIDTH``) and ``RETRIEVED`` (the ``CODE_WIDTH`` before)."""
    if hidden_size < 2 * CODE_WIDTH + 16:
        raise ValueError(f"the lookup circuit needs hidden_size >= {2 * CODE_WIDTH + 16}, got {hidden_size}")
    query = list(range(hidden_size - CODE_WIDTH, hidden_size))
    return query, list(range(hidden_size - 2 * CODE_WIDTH, hidden_size - CODE_WIDTH))


def slow_rope_dims(inv_freq: torch.Tensor, span: int, count: int) -> list[int]:
    """The ``count`` head dimensions whose RoPE angle changes least over ``span`` positions (both halves of
    each rotated pair, slowest pairs first; HF's ``rotate_half`` pairs dimension ``j`` with ``j + d/2``).
    Raises if any of them turns by more than 0.2 rad: a content match there would depend on position."""
    half = inv_freq.numel()
    pairs = torch.argsort(inv_freq)[: math.ceil(count / 2)].tolist()
    if float(inv_freq[pairs].max()) * span > 0.2:
        raise ValueError(f"RoPE turns dimension pair {pairs[-1]} by {float(inv_freq[pairs].max()) * span:.2f} rad "
                         f"over {span} positions: raise rope_theta")
    return sorted(d for j in pairs for d in (j, j + half))[:count]


@torch.no_grad()
def calibrated_readout(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                       quantile: float = 0.995):
    """A linear map whose GELU is ~1 for each sample's own class and ~0 for the others.

    ``weight`` / ``bias`` are a classifier's (``[C, D]``, ``[C]``) over ``features`` ``[N, D]``; ``labels``
    ``[N]`` the true classes, -1 where no class applies (background: every output should be ~0). The
    logits are centred per sample (``z = l - mean(l)``, a linear map); per class, ``z`` is shifted by the
    midpoint between its median on the class's samples and its ``quantile`` on all other samples (99.5th
    percentile by default), and scaled so that the median on the class's samples is 1."""
    centring = torch.eye(weight.shape[0]) - 1.0 / weight.shape[0]
    weight, bias = centring @ weight, centring @ bias
    z = features @ weight.T + bias  # [N, C]
    scales, shifts = [], []
    for c in range(weight.shape[0]):
        own, other = z[labels == c, c], z[labels != c, c]
        if own.numel() == 0:
            raise ValueError(f"class {c} has no sample in the calibration features")
        if own.median() <= other.quantile(quantile):
            raise ValueError(f"the read-out does not separate class {c} (median {float(own.median()):.2f} on its "
                             f"samples, {quantile:.1%} quantile {float(other.quantile(quantile)):.2f} on the others): "
                             "train the tower longer")
        threshold = 0.5 * (own.median() + other.quantile(quantile))
        scales.append(1.0 / (own.median() - threshold))
        shifts.append(threshold)
    scale, shift = torch.stack(scales), torch.stack(shifts)
    return scale[:, None] * weight, scale * (bias - shift)


@torch.no_grad()
def init_lookup_circuit(
    model: LlavaForConditionalGeneration, heads: nn.Module, features: torch.Tensor, patch_labels: dict[str, torch.Tensor],
    tokenizer, gather_layer: int = 1, lookup_layer: int = 2, gain: float = 4.0, amplitude: float = 1.0,
) -> None:
    """Write the lookup circuit into ``model`` (see the module docstring).

    ``heads``: the tower stage's read-outs (``row``, ``col``, ``colour``, ``shape``: ``nn.Linear``; colour
    and shape have a background class 0). ``features`` ``[N, D]``: tower patch features (feature layer);
    ``patch_labels``: their ``row`` / ``col`` (0-based) and ``colour`` / ``shape`` (1-based, 0 background)."""
    lm = model.model.language_model
    hidden = lm.config.hidden_size
    query, retrieved = code_dims(hidden)
    projector = model.model.multi_modal_projector
    if projector.linear_1.out_features < CODE_WIDTH:
        raise ValueError(f"the projector's hidden width must be >= {CODE_WIDTH}")
    # projector: tower read-outs -> QUERY
    rows = []
    for name, labels in (("row", patch_labels["row"]), ("col", patch_labels["col"])):
        layer = getattr(heads, name)
        rows.append(calibrated_readout(layer.weight, layer.bias, features, labels))
    for name in ("colour", "shape"):
        layer = getattr(heads, name)  # drop the background class: background patches get no code
        rows.append(calibrated_readout(layer.weight[1:], layer.bias[1:], features, patch_labels[name] - 1))
    weight, bias = torch.cat([w for w, _ in rows]), torch.cat([b for _, b in rows])
    projector_units = list(range(projector.linear_1.out_features - CODE_WIDTH, projector.linear_1.out_features))
    projector.linear_1.weight[projector_units] = weight
    projector.linear_1.bias[projector_units] = bias
    projector.linear_2.weight[query] = 0.0
    projector.linear_2.weight[:, projector_units] = 0.0
    projector.linear_2.weight[query, projector_units] = amplitude
    projector.linear_2.bias[query] = 0.0
    # embeddings: key words -> QUERY
    embed = lm.embed_tokens.weight
    embed[:, query] = 0.0
    code_of: dict[str, list[int]] = {}
    for r in range(GRID):
        for c in range(GRID):
            code_of[cell_name(r, c)] = [ROW + r, COL + c]
    for i, colour in enumerate(COLOURS):
        code_of[colour] = [COLOUR + i]
    for i, shape in enumerate(SHAPES):
        code_of[shape] = code_of[PLURALS[shape]] = [SHAPE + i]
    for word, code in code_of.items():
        token = tokenizer.convert_tokens_to_ids(word)
        if token == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no token for {word!r}")
        embed[token, [query[i] for i in code]] = amplitude
    head_dim = lm.config.head_dim if getattr(lm.config, "head_dim", None) else hidden // lm.config.num_attention_heads
    # a normalised residual holds ~kappa per active code entry (a key word's embedding has two, each
    # ``amplitude``, and rms amplitude * sqrt(2 / hidden)); the copies write ~amplitude back
    kappa = math.sqrt(hidden / 2)
    # layer 1 head 0: copy QUERY -> QUERY
    copy_through_head(lm.layers[gather_layer].self_attn, query, query, list(range(CODE_WIDTH)), 0, gain=amplitude / kappa)
    # layer 2 head 0: match QUERY in slow RoPE dims, copy the matched QUERY -> RETRIEVED
    attention = lm.layers[lookup_layer].self_attn
    slow = slow_rope_dims(lm.rotary_emb.inv_freq, span=1024, count=CODE_WIDTH)
    projection_gain = math.sqrt(gain * math.sqrt(head_dim)) / kappa
    for projection in (attention.q_proj, attention.k_proj):
        projection.weight[slow] = 0.0
        projection.weight[slow, query] = projection_gain
    copy_through_head(attention, query, retrieved, list(range(CODE_WIDTH)), 0, gain=amplitude / kappa)
    # LM head: colour / shape words read RETRIEVED
    lm_head = model.lm_head.weight
    for i, colour in enumerate(COLOURS):
        lm_head[tokenizer.convert_tokens_to_ids(colour), retrieved[COLOUR + i]] = 4.0
    for i, shape in enumerate(SHAPES):
        lm_head[tokenizer.convert_tokens_to_ids(shape), retrieved[SHAPE + i]] = 4.0


def copy_through_head(attention: nn.Module, source: list[int], target: list[int], value_dims: list[int], head: int,
                      gain: float = 1.0) -> None:
    """KV head 0's value dimensions ``value_dims`` carry residual dims ``source`` (normalised); query head
    ``head``'s output writes them into residual dims ``target`` (times ``gain``); no other query head reads
    those value dims, and nothing else writes ``target`` in this layer."""
    head_dim, num_heads = attention.head_dim, attention.config.num_attention_heads
    if len(source) != len(value_dims) or max(value_dims) >= head_dim:
        raise ValueError(f"cannot copy {len(source)} dims through value dims {value_dims} of a {head_dim}-dim head")
    attention.v_proj.weight[value_dims] = 0.0
    attention.v_proj.weight[value_dims, source] = 1.0
    for other in range(num_heads):
        attention.o_proj.weight[:, [other * head_dim + d for d in value_dims]] = 0.0
    attention.o_proj.weight[target] = 0.0
    attention.o_proj.weight[target, [head * head_dim + d for d in value_dims]] = gain

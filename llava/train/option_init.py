"""Structured initialisation of the shapes VLM's option circuit: answer "A"-"D" by finding the option line
whose word is the answer the lookup circuit read (``llava.train.lookup_init``).

A continuation of the trained shapes VLM with hop losses on these two steps kept their attention mass at
0.001-0.002 for 45 steps (lr 3e-4; docs/shapes_vlm.md): a trained head does not move to a new pattern
that fast, so the circuit is written in before the VLM stage, as the lookup is:

* **Flags** in residual dimensions the lookup leaves free (``option_dims``): option-able words (colours,
  shapes, digits) carry ``WORD``; the letters ``A``-``D`` their one-hot in ``LETTERS``; the ``:`` that ends
  ``ASSISTANT:`` (where every answer is predicted) carries ``COLON``; every token ``CONSTANT`` and BOS
  ``SINK``.
* **Binding, layer 1 head 1.** An option line reads ``A . red``: from each option word the head attends to
  the letter two tokens back, through RoPE's two fastest dimension pairs (frequencies ``w_0``, ``w_1``):
  the key of a letter is real in both pairs, the query of a word is rotated by ``-2 w_j``, so the score is
  ``sum_j a cos(w_j (i - n) - 2 w_j)``, largest at ``i - n = 2`` (the letter of an earlier option, 5 or 8
  tokens back, scores lower); any other query rests on BOS (``CONSTANT`` against ``SINK``, in a slow
  pair). Value / output copy ``LETTERS`` into ``BOUND`` at the word.
* **Choice, layer 5 head 0.** From the answer position the head scores each token by its colour / shape
  code against the answer's code in ``RETRIEVED`` (in RoPE's slow dimensions, as the lookup), plus a
  bonus for carrying a ``BOUND`` letter when the query is a ``COLON`` (so option words beat image patches
  of the same colour). Value / output copy ``BOUND`` into ``CHOSEN``, and the LM head reads the letters
  from ``CHOSEN``.

Every weight stays trainable: the option hop losses (``llava.train.train_shapes_vlm.HOP_HEADS``) and the
answers refine it, and teach the count and right-of answers to use the same choice head.
"""

from __future__ import annotations

import math

import torch
from transformers import LlavaForConditionalGeneration

from llava.shapes.questions import MAX_COUNT, PLURALS
from llava.shapes.scene import COLOURS, GRID, SHAPES
from llava.train.lookup_init import CODE_WIDTH, COLOUR, code_dims, copy_through_head, slow_rope_dims

OPTION_LETTERS = "ABCD"
OPTION_WIDTH = 1 + 3 * len(OPTION_LETTERS) + 3  # WORD, LETTERS, BOUND, CHOSEN, COLON, CONSTANT, SINK


def option_dims(hidden_size: int) -> dict[str, list[int]]:
    """Residual dimensions of the option circuit's flags: the first ``OPTION_WIDTH`` dimensions (the lookup
    circuit uses the last ``2 * CODE_WIDTH``)."""
    if hidden_size < 2 * CODE_WIDTH + OPTION_WIDTH:
        raise ValueError(f"the option circuit needs hidden_size >= {2 * CODE_WIDTH + OPTION_WIDTH}, got {hidden_size}")
    n = len(OPTION_LETTERS)
    return {"word": [0], "letters": list(range(1, 1 + n)), "bound": list(range(1 + n, 1 + 2 * n)),
            "chosen": list(range(1 + 2 * n, 1 + 3 * n)), "colon": [1 + 3 * n], "constant": [2 + 3 * n],
            "sink": [3 + 3 * n]}


def option_words() -> list[str]:
    """Words an option line can hold: colours, shapes (and plurals, so the flag is the same for a key word
    either way) and counts."""
    return [*COLOURS, *SHAPES, *PLURALS.values(), *(str(n) for n in range(max(GRID, MAX_COUNT) + 1))]


def token_id(tokenizer, word: str) -> int:
    token = tokenizer.convert_tokens_to_ids(word)
    if token == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no token for {word!r}")
    return token


@torch.no_grad()
def init_option_circuit(
    model: LlavaForConditionalGeneration, tokenizer, bind_layer: int = 1, bind_head: int = 1, choice_layer: int = 5,
    choice_head: int = 0, bind_gain: float = 8.0, bind_sink: float = 6.0, match_gain: float = 10.0,
    option_bonus: float = 6.0,
) -> None:
    """Write the option circuit into ``model`` (module docstring); call after ``init_lookup_circuit``.

    ``bind_gain``: score per RoPE pair of a letter two tokens back; ``bind_sink``: score of BOS for the
    binding head (what a query that is no option word attends to); ``match_gain``: score of a full code
    match at ``RETRIEVED`` amplitude 1; ``option_bonus``: score of carrying a bound letter."""
    lm = model.model.language_model
    config = lm.config
    hidden, head_dim = config.hidden_size, config.head_dim
    query_dims, retrieved = code_dims(hidden)
    dims = option_dims(hidden)
    heads_per_kv = config.num_attention_heads // config.num_key_value_heads
    if bind_head // heads_per_kv != 0 or choice_head // heads_per_kv != 0:
        raise ValueError("the option circuit writes into the first KV head of its layers")
    letter_values = list(range(CODE_WIDTH, CODE_WIDTH + len(OPTION_LETTERS)))  # after the lookup's QUERY copy
    if letter_values[-1] >= head_dim:
        raise ValueError(f"head_dim {head_dim} is too small for the option circuit (needs {letter_values[-1] + 1})")
    embed = lm.embed_tokens.weight
    for word in option_words():
        embed[token_id(tokenizer, word), dims["word"]] = 1.0
    for i, letter in enumerate(OPTION_LETTERS):
        embed[token_id(tokenizer, letter), dims["letters"]] = 0.0
        embed[token_id(tokenizer, letter), dims["letters"][i]] = 1.0
    embed[token_id(tokenizer, ":"), dims["colon"]] = 1.0
    embed[:, dims["constant"]] = 1.0
    embed[tokenizer.bos_token_id, dims["sink"]] = 1.0
    scaling = head_dim**-0.5
    # normalised residual entries: ~sqrt(hidden / k) for k active entries of size 1
    kappa = lambda active: math.sqrt(hidden / active)

    # binding: layer 1, the query head `bind_head` on KV head 0; RoPE pairs 0 and 1 (the fastest)
    attention = lm.layers[bind_layer].self_attn
    inv_freq = lm.rotary_emb.inv_freq
    half = head_dim // 2
    amplitude = math.sqrt(bind_gain / scaling) / math.sqrt(kappa(2) * kappa(1))
    q_rows = bind_head * head_dim
    attention.q_proj.weight[q_rows : q_rows + head_dim] = 0.0
    for pair in (0, 1):
        angle = 2 * float(inv_freq[pair])
        attention.q_proj.weight[q_rows + pair, dims["word"]] = amplitude * math.cos(angle)
        attention.q_proj.weight[q_rows + pair + half, dims["word"]] = -amplitude * math.sin(angle)
        attention.k_proj.weight[[pair, pair + half]] = 0.0
        attention.k_proj.weight[pair, dims["letters"]] = amplitude
    # every other query rests on BOS (no letter), in a slow pair: without it a query with no WORD flag
    # would average the letters before it (the system prompt's first word is "A")
    sink_dim = slow_rope_dims(inv_freq, span=1024, count=1)[0]
    attention.q_proj.weight[q_rows + sink_dim, dims["constant"]] = math.sqrt(bind_sink / scaling) / kappa(3)
    attention.k_proj.weight[sink_dim] = 0.0
    attention.k_proj.weight[sink_dim, dims["sink"]] = math.sqrt(bind_sink / scaling) / kappa(3)
    copy_through_head(attention, dims["letters"], dims["bound"], letter_values, bind_head, gain=1.0 / kappa(1))

    # choice: layer 5, head `choice_head`; codes in RoPE's slow dimensions, the option bonus in one more
    attention = lm.layers[choice_layer].self_attn
    codes = list(range(COLOUR, CODE_WIDTH))  # colour and shape entries of the codes
    slow = slow_rope_dims(inv_freq, span=1024, count=len(codes) + 1)
    q_rows = choice_head * head_dim
    attention.q_proj.weight[q_rows : q_rows + head_dim] = 0.0
    attention.k_proj.weight[slow] = 0.0
    code_amplitude = math.sqrt(match_gain / scaling) / kappa(3)
    for dim, code in zip(slow, codes, strict=False):
        attention.q_proj.weight[q_rows + dim, retrieved[code]] = code_amplitude
        attention.k_proj.weight[dim, query_dims[code]] = code_amplitude
    bonus_amplitude = math.sqrt(option_bonus / scaling) / kappa(3)
    attention.q_proj.weight[q_rows + slow[-1], dims["colon"]] = bonus_amplitude
    attention.k_proj.weight[slow[-1], dims["bound"]] = bonus_amplitude
    copy_through_head(attention, dims["bound"], dims["chosen"], list(range(len(OPTION_LETTERS))), choice_head,
                      gain=1.0 / kappa(3))
    for i, letter in enumerate(OPTION_LETTERS):
        model.lm_head.weight[token_id(tokenizer, letter), dims["chosen"][i]] = 4.0

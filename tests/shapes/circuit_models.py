"""A small random shapes VLM with the word codes and the option circuit written in (tests of the circuits)."""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase

from llava.shapes.model import build_processor, shapes_llava_config
from llava.shapes.scene import COLOURS, SHAPES
from llava.train.lookup_init import COLOUR, SHAPE, code_dims
from llava.train.option_init import init_option_circuit


def option_circuit_model(layers: int = 6) -> tuple[LlavaForConditionalGeneration, PreTrainedTokenizerBase]:
    """Random weights (seed 0, eager attention) with the colour / shape word codes that
    ``init_lookup_circuit`` writes (it needs a trained tower otherwise) and the option circuit."""
    tokenizer = build_processor().tokenizer
    config = shapes_llava_config(len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    config.text_config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")
    query, _ = code_dims(config.text_config.hidden_size)
    with torch.no_grad():
        embed = model.model.language_model.embed_tokens.weight
        embed[:, query] = 0.0
        for i, colour in enumerate(COLOURS):
            embed[tokenizer.convert_tokens_to_ids(colour), query[COLOUR + i]] = 1.0
        for i, shape in enumerate(SHAPES):
            embed[tokenizer.convert_tokens_to_ids(shape), query[SHAPE + i]] = 1.0
    init_option_circuit(model, tokenizer)
    return model, tokenizer

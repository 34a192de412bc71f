"""The written counting circuit: from the answer position, layer 3 head 0 spreads its attention evenly over
BOS and the centre patches of the objects asked about, and nothing else."""

from __future__ import annotations

import torch
from torch import nn

from llava.train.count_init import count_dims, init_count_circuit
from llava.train.lookup_init import COLOUR, SHAPE, code_dims
from llava.train.option_init import option_dims
from tests.shapes.circuit_models import option_circuit_model


def circuit_model():
    model, tokenizer = option_circuit_model()
    features = torch.randn(400, 96)  # a centre read-out that separates its classes
    head = nn.Linear(96, 1)
    labels = (features @ head.weight[0] + head.bias > 1.0).long()
    init_count_circuit(model, head, features, labels, tokenizer)
    return model, tokenizer


def patch_vector(hidden: int, colour: int | None, centre: bool) -> torch.Tensor:
    """A patch's residual as the projector writes it: its codes and its centre flag."""
    query, _ = code_dims(hidden)
    vector = torch.randn(hidden) * 0.02
    vector[[query[0], query[6]]] = 1.0  # row and column codes, as every patch has
    if colour is not None:
        vector[[query[COLOUR + colour], query[SHAPE]]] = 1.0
    vector[count_dims(hidden)["centre"]] = float(centre)
    return vector


def test_count_head_attends_evenly_to_bos_and_the_centres_of_the_counted_objects():
    model, tokenizer = circuit_model()
    lm = model.model.language_model
    hidden = lm.config.hidden_size
    embed = lm.embed_tokens
    red, blue = 0, 2
    patches = [patch_vector(hidden, red, True), patch_vector(hidden, red, False), patch_vector(hidden, blue, True),
               patch_vector(hidden, None, False), patch_vector(hidden, red, True), patch_vector(hidden, red, False)]
    words = tokenizer("how many red shapes are there ? ASSISTANT :", add_special_tokens=False, return_tensors="pt").input_ids
    bos = embed(torch.tensor([[tokenizer.bos_token_id]]))
    sequence = torch.cat([bos, torch.stack(patches)[None], embed(words)], dim=1)
    # the gather head would have copied "red" to the answer position: put its code there
    query, _ = code_dims(hidden)
    sequence[0, -1, query[COLOUR + red]] += 1.0
    with torch.no_grad():
        attention = lm(inputs_embeds=sequence, output_attentions=True).attentions[3][0, 0, -1]
    wanted = [0, 1, 5]  # BOS, the two red centres
    assert attention[wanted].sum() > 0.9, attention[:8]
    assert attention[[1, 5]].min() > 0.05 and attention[0] > 0.3  # BOS weighs as BOS_COUNT_WEIGHT centres
    assert attention[[2, 3, 4, 6]].sum() < 0.05  # red non-centre, blue centre, background


def test_count_dims_follow_the_option_dims():
    dims = count_dims(64)
    options = {d for block in option_dims(64).values() for d in block}
    query, retrieved = code_dims(64)
    used = [d for block in dims.values() for d in block]
    assert not set(used) & (options | set(query) | set(retrieved))
